"""Golden values of the bf16 compute path (`--dtype bf16`) from PyTorch + transformers.

Run once (needs torch, transformers, safetensors):  python scripts/make_bf16_golden.py [NAME ...]
For every tests/fixtures/parity_<name>/ (made by scripts/make_parity.py) it loads the checkpoint
in bfloat16 with eager attention, as a bf16 user of transformers runs it, feeds the golden
inputs of golden.safetensors and writes golden_bf16.safetensors: `logits` (the bf16 logits,
widened to f32), `loss` (HF's causal-LM loss, computed on the logits widened to f32, as
transformers' loss does) and `grad.<param name>` (bf16 gradients, widened to f32). Written with
torch 2.15.0 and transformers 5.24.0.
"""
import glob, os, sys
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

def make(d):
    g = load_file(os.path.join(d, "golden.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16,
                                                 attn_implementation="eager").eval()
    ids, labels = g["input_ids"], g["labels"]
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    res = {"input_ids": ids, "labels": labels,
           "logits": out.logits.detach().float().contiguous(),
           "loss": out.loss.detach().float().reshape(1)}
    for n, p in model.named_parameters():
        if n == "lm_head.weight" and "GPTNeoX" in type(model).__name__:
            n = "embed_out.weight"
        res["grad." + n] = p.grad.detach().float().contiguous()
    missing = {k for k in g if k.startswith("grad.")} ^ {k for k in res if k.startswith("grad.")}
    assert not missing, (d, missing)
    save_file(res, os.path.join(d, "golden_bf16.safetensors"))
    f32 = g["logits"]
    rel = ((res["logits"] - f32).abs().max() / f32.abs().max()).item()
    print(os.path.basename(d), "loss", out.loss.item(), "f32 loss", g["loss"].item(),
          f"bf16 vs f32 logits rel {rel:.2e}")

if __name__ == "__main__":
    torch.manual_seed(0)
    names = sys.argv[1:]
    dirs = sorted(glob.glob(os.path.join(ROOT, "parity_*")))
    for d in dirs:
        if not names or os.path.basename(d)[len("parity_"):] in names:
            make(d)
