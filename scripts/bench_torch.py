"""The `unlearn bench` workload in PyTorch, for side-by-side ratios (PyTorch is only a measuring
stick, never a dependency of the tool).

  python scripts/bench_torch.py MODEL_DIR [--batch 8 --seq 128 --threads 2 --json OUT.json]

Loads the same HF directory with transformers (f32, eager attention) and times: training steps
(forward + backward + AdamW) on batch x seq random tokens, teacher-forced scoring batches, and
greedy generation of 32 tokens for 4 prompts of 32 tokens with a KV cache. As `unlearn bench`
does: one untimed warm-up of each workload, then each repetition timed on its own and the median
reported (a shared VM's single repetitions swing by tens of percent).
With --objective npo+gd the step is NPO on the batch (reference sums computed once, adapters
off) plus NLL on a second, retain batch; with --lora-r R the model is wrapped by peft
(LoraConfig r=R, alpha=2R, every linear layer of the decoder) and only the adapters train.
With --device cuda (or cuda:N) everything runs on that GPU, each timing waits for the GPU to
finish (torch.cuda.synchronize) and the GPU's peak allocation is reported as gpu_peak_mib.
`unlearn bench --compare-torch` runs it alternately with its own measurement (--json), passing
its own --device.
Needs: pip install torch==2.15.0 transformers; peft for --lora-r.
"""
import argparse, json, resource, statistics, time, torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model"); ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seq", type=int, default=128); ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--train-steps", type=int, default=5)
ap.add_argument("--score-batches", type=int, default=4)
ap.add_argument("--gen-batch", type=int, default=4)
ap.add_argument("--gen-prompt", type=int, default=32)
ap.add_argument("--gen-tokens", type=int, default=32)
ap.add_argument("--gen-runs", type=int, default=3)
ap.add_argument("--objective", default="nll", choices=["nll", "npo+gd"])
ap.add_argument("--lora-r", type=int, default=0)
ap.add_argument("--checkpoint-activations", action="store_true")
ap.add_argument("--device", default="cpu")
# bf16: the model loaded in bf16 (as open-unlearning loads it; with --lora-r peft keeps the
# adapters in f32), logits widened to f32 before the log-softmax, as transformers' loss does
ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
ap.add_argument("--json")
a = ap.parse_args()
dev = torch.device(a.device)
cuda = dev.type == "cuda"
def sync():
    if cuda:
        torch.cuda.synchronize(dev)
torch.set_num_threads(a.threads)
torch.manual_seed(0)
m = AutoModelForCausalLM.from_pretrained(
    a.model, dtype=torch.bfloat16 if a.dtype == "bf16" else torch.float32,
    attn_implementation="eager")
m.to(dev)
V = m.config.vocab_size
ids = torch.randint(0, V, (a.batch, a.seq + 1)).to(dev)
rids = torch.randint(0, V, (a.batch, a.seq + 1)).to(dev)
if a.lora_r > 0:
    import peft
    cfg = peft.LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"], task_type="CAUSAL_LM")
    m = peft.get_peft_model(m, cfg)
if a.checkpoint_activations:
    # transformers' per-layer checkpointing (with peft the inputs must require grad)
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m.train()
def label_lp(x):
    out = m(input_ids=x[:, :-1])
    return torch.log_softmax(out.logits.float(), -1).gather(-1, x[:, 1:, None]).squeeze(-1)
if a.objective == "npo+gd":
    with torch.no_grad():
        if a.lora_r > 0:
            with m.disable_adapter():
                ref_nll = -label_lp(ids).sum(1)
        else:
            ref_nll = -label_lp(ids).sum(1)
def vm_hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
# the training phase's peak: reset the high-water mark once the model is loaded (Linux >= 4.0)
open("/proc/self/clear_refs", "w").write("5")
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5,
                        weight_decay=0.01)
def step():
    opt.zero_grad(set_to_none=True)
    if a.objective == "npo+gd":
        nll = -label_lp(ids).sum(1)
        npo = -(2 / 0.1) * torch.nn.functional.logsigmoid(0.1 * (nll - ref_nll)).mean()
        (npo - label_lp(rids).mean()).backward()
    else:
        (-label_lp(ids).mean()).backward()
    opt.step()
def timed(f):
    sync(); t = time.perf_counter(); f(); sync(); return time.perf_counter() - t
if cuda:
    torch.cuda.reset_peak_memory_stats(dev)
step()
steps = [timed(step) for _ in range(max(1, a.train_steps))]
ts = statistics.median(steps)
train_rss = vm_hwm_mib()
del opt
m.eval()
sids = torch.randint(0, V, (max(1, a.score_batches) * a.batch, a.seq + 1)).to(dev)
def score(x):
    torch.log_softmax(m(input_ids=x[:, :-1]).logits.float(), -1).gather(-1, x[:, 1:, None])
with torch.no_grad():
    m(input_ids=sids[:a.batch, :-1])
    batches = [timed(lambda: score(sids[i * a.batch:(i + 1) * a.batch]))
               for i in range(max(1, a.score_batches))]
    sc = a.batch * a.seq / statistics.median(batches)
    p = torch.randint(0, V, (a.gen_batch, a.gen_prompt)).to(dev)
    m.generate(p, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
    gen_fn = lambda: m.generate(p, max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens,
                                do_sample=False, pad_token_id=0)
    runs = [timed(gen_fn) for _ in range(max(1, a.gen_runs))]
    gen = a.gen_batch * a.gen_tokens / statistics.median(runs)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gpu_peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None
print(f"torch {torch.__version__}, threads {a.threads}, device {a.device}")
print(f"training step    {ts:.3f} s  ({a.batch * a.seq / ts:.0f} tokens/s, batch {a.batch}x{a.seq})")
print(f"scoring          {sc:.0f} tokens/s")
print(f"generation       {gen:.1f} tokens/s (batch {a.gen_batch}, greedy, KV cache)")
print(f"training peak    {train_rss:.0f} MiB")
print(f"peak RSS         {rss:.0f} MiB")
if cuda:
    print(f"GPU peak         {gpu_peak:.0f} MiB allocated ({torch.cuda.get_device_name(dev)})")
if a.json:
    with open(a.json, "w") as f:
        json.dump({"torch": torch.__version__, "train_step_s": ts,
                   "train_tokens_per_s": a.batch * a.seq * (2 if a.objective == "npo+gd" else 1) / ts, "score_tokens_per_s": sc,
                   "gen_tokens_per_s": gen, "peak_rss_mib": rss, "device": a.device, "dtype": a.dtype, "gpu_peak_mib": gpu_peak, "train_peak_rss_mib": train_rss, "train_steps_s": steps,
                   "score_batches_s": batches, "gen_runs_s": runs}, f, indent=1)
