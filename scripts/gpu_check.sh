#!/usr/bin/env bash
# The GPU check (issue #25): runs on a machine with an NVIDIA GPU, its driver and the CUDA 13
# runtime libraries (cuBLAS, cuRAND, NVRTC, cudart: a CUDA 13 toolkit or NVIDIA's pip wheels),
# and no Rust: it runs a binary built elsewhere with `--features cuda`
# (scripts/cuda_toolchain.sh, then `cargo build --release --features cuda --target-dir
# target/cuda`). Each step has its own time limit; together they take a few minutes.
#
#   UNLEARN_BIN=target/cuda/release/unlearn bash scripts/gpu_check.sh OUT_DIR
#
# Steps, each recorded in OUT_DIR/gpu_check.json (status, seconds, numbers) with its log:
#   1. the GPU, driver, and whether the binary finds every CUDA library;
#   2. `unlearn check-device --device cuda`: logits, loss and every gradient of the tiny parity
#      checkpoints (every architecture) on CPU and GPU, against transformers' values and each
#      other (tolerances in src/app/device_check.rs); then the same in bf16 (`--dtype bf16`,
#      against transformers run in bf16);
#   3. one NPO+GD unlearning run of SmolLM2-135M-Instruct (.cache/models/*.gguf if present, else
#      a random model of its shapes from `unlearn init`) on the GPU and the same run on the CPU:
#      the per-step losses compared; and the GPU run once more in bf16 (`dtype = "bf16"`);
#   4. one evaluation of the unlearned model on the GPU and the CPU (forget/retain probability,
#      ROUGE): per-item values compared;
#   5. `unlearn bench --device cuda --compare-torch`: training step, scoring and generation
#      throughput against PyTorch on the same GPU, alternating runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check.sh OUT_DIR}
DEV=${GPU_DEVICE:-cuda:0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# the binary: UNLEARN_BIN, else the packed one (scripts/gpu_pack.sh: stripped and xz-compressed,
# 12 MB, small enough to travel to the GPU machine), else the build's own
U=${UNLEARN_BIN:-}
if [ -z "$U" ] && [ -f target/cuda/unlearn-gpu.xz ]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    target/cuda/unlearn-gpu.xz "$W/unlearn" && chmod +x "$W/unlearn" && U=$W/unlearn
fi
U=${U:-target/cuda/release/unlearn}
# sizes of the benchmark (override for a dry run on a CPU)
BENCH_ARGS=${BENCH_ARGS:---rounds 2 --batch 8 --seq 256 --train-steps 5}
RES="$OUT/steps.jsonl"
: > "$RES"

# step NAME LIMIT CMD...: run with a time limit, log to OUT/NAME.log, record status and time
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N) rc
  echo "== $name: $*" | tee -a "$OUT/gpu_check.log"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  local t1=$(date +%s.%N)
  tail -n 25 "$OUT/$name.log" | tee -a "$OUT/gpu_check.log"
  python3 -c 'import json,sys; print(json.dumps({"step": sys.argv[1], "rc": int(sys.argv[2]), "seconds": round(float(sys.argv[4]) - float(sys.argv[3]), 1)}))' \
    "$name" "$rc" "$t0" "$t1" >> "$RES"
  return $rc
}

# 1. libraries: the binary links libcuda (the driver's) and the CUDA 13 runtime libraries
libdirs=""
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  for d in ${CUDA_LIB_DIRS:-} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
      /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu \
      $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null \
        | xargs -r -n1 -I{} find {}/nvidia -maxdepth 3 -type d -name lib 2>/dev/null); do
    if [ -e "$d/$lib" ]; then
      case ":$libdirs:" in *":$d:"*) ;; *) libdirs="$libdirs:$d" ;; esac
      break
    fi
  done
done
curand=0
for d in ${libdirs//:/ }; do [ -e "$d/libcurand.so.10" ] && curand=1; done
if [ "$curand" = 0 ]; then
  # no cuRAND here (PyTorch's wheels do not install it): the packed copy (scripts/gpu_pack.sh)
  if [ -f target/cuda/libcurand.so.10.xz ]; then
    mkdir -p "$W/lib"
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      target/cuda/libcurand.so.10.xz "$W/lib/libcurand.so.10" && libdirs="$libdirs:$W/lib"
  fi
fi
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$U" | grep -E "cuda|cublas|curand|nvrtc|not found"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"
if ldd "$U" | grep -q "not found"; then
  echo "gpu_check: the binary misses libraries (env.log); set CUDA_LIB_DIRS to the folders holding them" >&2
fi

# 2. parity on every architecture
step parity 90 "$U" check-device --device "$DEV" --json "$OUT/parity.json" --overwrite
step parity_bf16 60 "$U" check-device --device "$DEV" --dtype bf16 --json "$OUT/parity_bf16.json" --overwrite

# 3. the same unlearning run on GPU and CPU
GGUF=${SMOLLM2_GGUF:-$(ls .cache/models/SmolLM2-135M-Instruct*.gguf 2>/dev/null | head -n1)}
HUB=${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}
if [ -d "$HUB/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots" ]; then
  # the Hugging Face cache of this machine, read offline
  step model 60 env HF_HUB_OFFLINE=1 "$U" generate --model HuggingFaceTB/SmolLM2-135M-Instruct \
    --prompt "Hello" --max-new-tokens 4 --device cpu
  ln -s "$(ls -d "$HUB"/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/* | head -n1)" "$W/smol"
  echo '{"model": "HuggingFaceTB/SmolLM2-135M-Instruct (this machine'"'"'s Hugging Face cache)"}' > "$OUT/model.json"
elif [ -n "$GGUF" ]; then
  step model 60 "$U" import "$GGUF" --out "$W/smol"
  echo "{\"model\": \"$(basename "$GGUF")\"}" > "$OUT/model.json"
else
  step model 60 "$U" init --out "$W/smol" --hidden 576 --layers 30 --heads 9 --kv-heads 3 \
    --intermediate 1536 --vocab 49152 --max-position 2048 --rope-theta 100000
  echo '{"model": "random, SmolLM2-135M shapes (unlearn init)"}' > "$OUT/model.json"
fi
T=${UNLEARN_TOFU_DIR:-../shared/data/tofu}
python3 - "$T" "$W/data" <<'PY'
import json, os, sys
t, d = sys.argv[1], sys.argv[2]
os.makedirs(f"{d}/bench", exist_ok=True)
def rd(f):
    p = os.path.join(t, f)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else None
full = rd("full.jsonl")
if full is None:  # no TOFU here: the 2-item splits of the committed Hub fixture
    mini = json.load(open("tests/fixtures/hub/tofu-mini.expected.json"))["splits"]
    full, names = mini["retain_perturbed"] * 8, {k: v for k, v in mini.items()}
    forget, bench = mini["forget01"] * 4, {
        "forget01_perturbed": mini["forget01_perturbed"], "holdout01": mini["holdout01"],
        "retain_perturbed": mini["retain_perturbed"], "real_authors_perturbed": mini["retain_perturbed"],
        "world_facts_perturbed": mini["retain_perturbed"]}
else:
    forget = rd("forget01.jsonl")
    bench = {n: rd(f"{n}.jsonl") for n in ["forget01_perturbed", "holdout01", "retain_perturbed",
                                            "real_authors_perturbed", "world_facts_perturbed"]}
def wr(name, rows):
    with open(os.path.join(d, name), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
wr("forget.jsonl", forget[:16])
wr("retain.jsonl", full[:16])
for n, rows in bench.items():
    wr(f"bench/{n}.jsonl", rows[:8])
PY
RUN="--set model=$W/smol --set forget=$W/data/forget.jsonl --set retain=$W/data/retain.jsonl
  --set method=npo+gd --set train.max_steps=8 --set train.batch_size=4 --set train.lr=1e-5"
step run_cuda 90 "$U" run $RUN --set "out=$W/un_cuda" --set "run_dir=$W/run_cuda" --set "device=$DEV"
step run_cpu 120 "$U" run $RUN --set "out=$W/un_cpu" --set "run_dir=$W/run_cpu" --set device=cpu
step run_cuda_bf16 90 "$U" run $RUN --set "out=$W/un_cuda_bf16" --set "run_dir=$W/run_cuda_bf16" \
  --set "device=$DEV" --set dtype=bf16
cp "$W/run_cuda/train_log.jsonl" "$OUT/train_log_cuda.jsonl" 2>/dev/null
cp "$W/run_cuda_bf16/train_log.jsonl" "$OUT/train_log_cuda_bf16.jsonl" 2>/dev/null
cp "$W/run_cpu/train_log.jsonl" "$OUT/train_log_cpu.jsonl" 2>/dev/null

# 4. one evaluation of the GPU-unlearned model on each device
EV="--model $W/un_cuda --benchmark $W/data/bench --forget-split forget01
  --set max_new_tokens=32 --set max_items=8"
step eval_cuda 90 "$U" eval $EV --out "$W/eval_cuda" --device "$DEV"
step eval_cpu 90 "$U" eval $EV --out "$W/eval_cpu" --device cpu
cp "$W/eval_cuda/TOFU_EVAL.json" "$OUT/eval_cuda.json" 2>/dev/null
cp "$W/eval_cpu/TOFU_EVAL.json" "$OUT/eval_cpu.json" 2>/dev/null

# 5. throughput against PyTorch on the same GPU
step bench 240 "$U" bench --model "$W/smol" --device "$DEV" --compare-torch $BENCH_ARGS \
  --objective npo+gd --json "$OUT/bench.json" --overwrite

python3 - "$OUT" <<'PY'
import json, os, sys
o = sys.argv[1]
load = lambda f: json.load(open(os.path.join(o, f))) if os.path.exists(os.path.join(o, f)) else None
steps = [json.loads(l) for l in open(os.path.join(o, "steps.jsonl"))]
out = {"steps": steps, "env": open(os.path.join(o, "env.log")).read().splitlines(),
       "model": load("model.json"), "parity": load("parity.json"),
       "parity_bf16": load("parity_bf16.json"), "bench": load("bench.json")}
def losses(f):
    p = os.path.join(o, f)
    return [json.loads(l).get("loss") for l in open(p)] if os.path.exists(p) else []
a, b = losses("train_log_cuda.jsonl"), losses("train_log_cpu.jsonl")
out["run"] = {"loss_cuda": a, "loss_cpu": b, "loss_cuda_bf16": losses("train_log_cuda_bf16.jsonl"),
              "max_rel_diff": max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=None)}
ec, ep = load("eval_cuda.json"), load("eval_cpu.json")
def flat(v, pre=""):
    if isinstance(v, dict):
        for k, x in v.items():
            yield from flat(x, f"{pre}.{k}" if pre else k)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield pre, float(v)
if ec and ep:
    c, p = dict(flat(ec)), dict(flat(ep))
    diffs = {k: abs(c[k] - p[k]) for k in c if k in p}
    worst = max(diffs, key=diffs.get) if diffs else None
    out["eval"] = {"values_compared": len(diffs), "max_abs_diff": diffs.get(worst), "worst": worst}
out["pass"] = all(s["rc"] == 0 for s in steps)
json.dump(out, open(os.path.join(o, "gpu_check.json"), "w"), indent=1)
print(json.dumps({k: out[k] for k in ("pass", "run", "eval") if k in out}, indent=1))
PY
