"""Reference values for tests/smollm2.rs (run once; needs transformers, gguf, torch).

  python scripts/make_smollm2_ref.py SmolLM2-135M-Instruct.Q4_1.gguf IMPORTED_DIR

1. Token ids of sample strings from transformers' own GGUF tokenizer conversion
   (AutoTokenizer.from_pretrained(..., gguf_file=...)), independent of our tokenizer rebuild.
2. Loads IMPORTED_DIR (written by `unlearn import`) with transformers: checks that it loads, and
   records logits of a chat prompt (first 16 values at the last position, top-5 ids) and the greedy
   answer, so the Rust test can compare our forward pass with transformers' on the real model.
Writes tests/fixtures/smollm2_ref.json.
"""
import json, os, sys, torch
from transformers import AutoTokenizer, AutoModelForCausalLM

gguf, imported = sys.argv[1], sys.argv[2]
SAMPLES = [
    "What is the capital of France?",
    "Hello world! 12345 numbers, and    spaces\n\nnewlines\ttabs.",
    "The quick brown fox, born in 1956 in Zürich, jumped over 12 lazy dogs; its full name is Reynard O'Fox-Smith.",
    "Unicode: café, naïve, 東京, emoji 🙂, Ελληνικά.",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "don't won't they'll I'm we've you'd it's",
    "   leading spaces and trailing   ",
    "def f(x):\n    return x**2  # code",
]
ref_tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(gguf)), gguf_file=os.path.basename(gguf))
ours = AutoTokenizer.from_pretrained(imported)
ids = [ref_tok(s, add_special_tokens=False)["input_ids"] for s in SAMPLES]
for s, i in zip(SAMPLES, ids):
    j = ours(s, add_special_tokens=False)["input_ids"]
    print("match" if i == j else "MISMATCH", repr(s[:40]))
model = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()
prompt = ours.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  tokenize=False, add_generation_prompt=True)
pids = ours(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(pids).logits[0, -1]
    gen = model.generate(pids, max_new_tokens=12, do_sample=False)
answer = ours.decode(gen[0, pids.shape[1]:], skip_special_tokens=True)
print("greedy:", answer)
out = {"samples": SAMPLES, "ids": ids, "prompt": prompt, "prompt_ids": pids[0].tolist(),
       "last_logits_16": logits[:16].tolist(), "top5": torch.topk(logits, 5).indices.tolist(),
       "greedy_answer": answer}
path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "smollm2_ref.json")
json.dump(out, open(path, "w"), indent=1, ensure_ascii=False)
print("wrote", path)
