"""Runs llama.cpp (llama-cpp-python, which builds it from source) on `unlearn export`'s GGUF of a
tiny random model of every architecture we export, and compares its logits with transformers'
on the Hugging Face directory the export came from; and tokenizes with llama.cpp through an
exported SentencePiece vocabulary (tests/fixtures/spm_tokenizer). Prints JSON (committed as
tests/fixtures/gguf_export/llama_cpp_logits.json; docs/robustness.md has the table).

    pip install llama-cpp-python torch transformers safetensors
    python scripts/llama_cpp_logits_check.py target/release/unlearn WORK_DIR > out.json

Each model: `unlearn init --arch A --hidden 64 --layers L`, its norm weights and biases moved
away from their initial values (so a misplaced or unshifted one shows), OLMo's clip_qkv and
Gemma's window and soft-caps set so that they bind on the 24 tokens compared, then `unlearn export
--type f32`. llama.cpp runs with an f32 KV cache (its default f16 cache rounds k and v).
"""
import json
import os
import shutil
import subprocess
import sys

import llama_cpp
import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file

unlearn, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
IDS = [(7 * i + 3) % 250 + 3 for i in range(24)]
ARCHS = [
    ("llama", ["--layers", "2"], {}),
    ("qwen2", ["--layers", "2"], {}),
    ("qwen3", ["--layers", "2"], {}),
    ("olmo", ["--layers", "2"], {"clip_qkv": 0.05}),
    ("olmo2", ["--layers", "2"], {}),
    ("phi3", ["--layers", "2"], {}),
    ("gemma2", ["--layers", "2"], {"sliding_window": 8, "attn_logit_softcapping": 0.2,
                                   "final_logit_softcapping": 0.5}),
    ("gemma3", ["--layers", "6"], {"sliding_window": 8, "final_logit_softcapping": 0.5}),
    ("gpt_neox", ["--layers", "2", "--kv-heads", "4"], {}),
]


def sh(*args):
    subprocess.run([unlearn, *args], check=True, stdout=subprocess.DEVNULL)


def perturb(d):
    p = os.path.join(d, "model.safetensors")
    t = load_file(p)
    g = torch.Generator().manual_seed(0)
    for k, v in t.items():
        if k.endswith("norm.weight") or k.endswith(".bias"):
            t[k] = v + 0.2 * torch.randn(v.shape, generator=g)
    save_file(t, p, metadata={"format": "pt"})


def f16_gelu(x):
    """ggml's CPU GELU: a table indexed by the f16 input holding f16 outputs (GGML_GELU_FP16)."""
    xf = x.to(torch.float16).to(torch.float64)
    y = 0.5 * xf * (1 + torch.tanh(0.7978845608028654 * (xf + 0.044715 * xf ** 3)))
    return y.to(torch.float16).to(x.dtype)


class F16Gelu(torch.nn.Module):
    def forward(self, x):
        return f16_gelu(x)


def transformers_logits(d, emulate_gelu=False):
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64)
    if emulate_gelu:
        for m in hf.modules():
            for a in ("act_fn", "act"):
                if hasattr(m, a):
                    setattr(m, a, F16Gelu())
    with torch.no_grad():
        return hf(torch.tensor([IDS])).logits[0].numpy()


def llama_cpp_logits(gguf, ids):
    # the KV cache in f32 (llama.cpp's default f16 cache rounds k and v to 11 bits)
    m = llama_cpp.Llama(model_path=gguf, n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                        n_batch=64, type_k=0, type_v=0)
    m.eval(ids)
    return np.array(m.scores[: len(ids)], dtype=np.float64)


out = {"llama_cpp_python": llama_cpp.__version__, "transformers": transformers.__version__,
       "ids": IDS, "models": {}}
for arch, extra, edit in ARCHS:
    # not named after the architecture: llama.cpp gives a file whose general.name (the folder's
    # name) contains "phi3" Phi-3's special-token attributes, which need Phi-3's own vocabulary
    d = os.path.join(work, f"tiny{len(out['models'])}")
    shutil.rmtree(d, ignore_errors=True)
    sh("init", "--arch", arch, "--out", d, "--hidden", "64", "--max-position", "64", *extra)
    if edit:
        c = json.load(open(os.path.join(d, "config.json")))
        c.update(edit)
        json.dump(c, open(os.path.join(d, "config.json"), "w"))
    perturb(d)
    g = d + ".gguf"
    if os.path.exists(g):
        os.remove(g)
    sh("export", "--model", d, "--out", g, "--type", "f32")
    ref = transformers_logits(d)
    got = llama_cpp_logits(g, IDS)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    out["models"][arch] = {"max_rel_diff": rel, "largest_logit": float(np.abs(ref).max()),
                           "argmax_agree": int((got.argmax(-1) == ref.argmax(-1)).sum()),
                           "positions": len(IDS)}
    if arch in ("gemma2", "gemma3", "gpt_neox"):
        # llama.cpp's GELU goes through an f16 table: the same difference with it emulated
        emu = transformers_logits(d, emulate_gelu=True)
        out["models"][arch]["max_rel_diff_f16_gelu_emulated"] = float(
            np.abs(got - emu).max() / np.abs(emu).max())
    print(arch, out["models"][arch], file=sys.stderr)

# a SentencePiece vocabulary through llama.cpp's tokenizer
fx = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "spm_tokenizer")
golden = json.load(open(os.path.join(fx, "golden.json")))
d = os.path.join(work, "spm")
shutil.rmtree(d, ignore_errors=True)
sh("init", "--arch", "llama", "--out", d, "--hidden", "64", "--layers", "2",
   "--vocab", str(golden["vocab_size"]))
c = json.load(open(os.path.join(d, "config.json")))
c.update({"bos_token_id": 1, "eos_token_id": 2})
json.dump(c, open(os.path.join(d, "config.json"), "w"))
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(fx, f), os.path.join(d, f))
if os.path.exists(d + ".gguf"):
    os.remove(d + ".gguf")
sh("export", "--model", d, "--out", d + ".gguf", "--type", "f32")
m = llama_cpp.Llama(model_path=d + ".gguf", n_ctx=64, verbose=False, vocab_only=True)
toks = []
for t in golden["texts"]:
    ids = m.tokenize(t["text"].encode(), add_bos=True, special=False)
    toks.append({"text": t["text"], "llama_cpp": ids, "transformers": t["transformers"],
                 "sentencepiece": [1] + t["sentencepiece"], "same_as_transformers": ids == t["transformers"]})
out["sentencepiece_tokenizer"] = toks
json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
print()
