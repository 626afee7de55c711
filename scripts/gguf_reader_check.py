"""Reads a GGUF file written by `unlearn export` with llama.cpp's own Python reader (the `gguf`
package, gguf-py from the llama.cpp repository) and writes what llama.cpp needs from it: the
metadata keys with their types and scalar values, the tokenizer array lengths, and every
tensor's name, type and shape. tests/export.rs compares a fresh export with the committed
output (tests/fixtures/gguf_export/smollm2_q8_0.json).

    pip install gguf
    unlearn import SmolLM2-135M-Instruct.Q4_1.gguf --out smol
    unlearn export --model smol --out smol.q8_0.gguf --type q8_0
    python scripts/gguf_reader_check.py smol.q8_0.gguf > tests/fixtures/gguf_export/smollm2_q8_0.json
"""
import importlib.metadata
import json
import sys

import gguf

r = gguf.GGUFReader(sys.argv[1])
meta = {}
for name, f in r.fields.items():
    if name.startswith("GGUF."):
        continue
    t = f.types[0].name
    if t == "ARRAY":
        meta[name] = {"type": f"ARRAY[{f.types[1].name}]", "len": len(f.data)}
    elif t == "STRING":
        v = bytes(f.parts[f.data[0]]).decode("utf-8")
        meta[name] = {"type": t, "value": v if len(v) < 200 else f"<{len(v)} chars>"}
    else:
        meta[name] = {"type": t, "value": f.parts[f.data[0]].tolist()[0]}
arch = bytes(r.fields["general.architecture"].parts[r.fields["general.architecture"].data[0]]).decode()
needed = [f"{arch}.{k}" for k in ["context_length", "embedding_length", "block_count",
          "feed_forward_length", "attention.head_count", "attention.head_count_kv",
          "attention.layer_norm_rms_epsilon", "rope.freq_base"]] + [
    "general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]
out = {
    "gguf": importlib.metadata.version("gguf"),
    "missing_for_llama_cpp": [k for k in needed if k not in meta],
    "metadata": meta,
    "tensors": [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape]}
                for t in r.tensors],
}
json.dump(out, sys.stdout, indent=1, sort_keys=True, ensure_ascii=False)
print()
