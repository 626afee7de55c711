"""The `unlearn bench` workload in PyTorch, for side-by-side ratios (PyTorch is only a measuring
stick, never a dependency of the tool).

  python scripts/bench_torch.py MODEL_DIR [--batch 8 --seq 128 --threads 2]

Loads the same HF directory with transformers (f32, eager attention) and times: one training
step (forward + backward + AdamW) on batch x seq random tokens, teacher-forced scoring of
2 batches, and greedy generation of 32 tokens for 4 prompts of 32 tokens with a KV cache.
"""
import argparse, resource, time, torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model"); ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seq", type=int, default=128); ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--train-steps", type=int, default=3)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
m = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
V = m.config.vocab_size
ids = torch.randint(0, V, (a.batch, a.seq + 1))
opt = torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=0.01)
def step():
    opt.zero_grad(set_to_none=True)
    out = m(input_ids=ids[:, :-1])
    lp = torch.log_softmax(out.logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    (-lp.mean()).backward()
    opt.step()
step()
t = time.perf_counter()
for _ in range(a.train_steps): step()
ts = (time.perf_counter() - t) / a.train_steps
m.eval()
sids = torch.randint(0, V, (2 * a.batch, a.seq + 1))
with torch.no_grad():
    m(input_ids=sids[:a.batch, :-1])
    t = time.perf_counter()
    for i in range(2):
        x = sids[i * a.batch:(i + 1) * a.batch]
        lp = torch.log_softmax(m(input_ids=x[:, :-1]).logits, -1).gather(-1, x[:, 1:, None])
    sc = 2 * a.batch * a.seq / (time.perf_counter() - t)
    p = torch.randint(0, V, (4, 32))
    m.generate(p, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
    t = time.perf_counter()
    g = m.generate(p, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    gen = 4 * 32 / (time.perf_counter() - t)
print(f"torch {torch.__version__}, threads {a.threads}")
print(f"training step    {ts:.3f} s  ({a.batch * a.seq / ts:.0f} tokens/s, batch {a.batch}x{a.seq})")
print(f"scoring          {sc:.0f} tokens/s")
print(f"generation       {gen:.1f} tokens/s (batch 4, greedy, KV cache)")
print(f"peak RSS         {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
