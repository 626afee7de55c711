#!/usr/bin/env bash
# The real-model study of issue #21 (docs/results.md): SmolLM2-135M-Instruct fine-tuned on a TOFU
# subset of 20 authors (forget: the 2 authors of forget01; retain: authors 0-17 of retain90, none
# of forget10's), the retain oracle fine-tuned on the 18 retain authors only, then every method
# family over two learning rates as one `unlearn sweep`. Every step resumes: run it again after
# an interruption and finished work is kept.
#   UNLEARN_TOFU_DIR=../shared/data/tofu bash scripts/study_smollm2.sh [DIR]   (default runs/study)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-runs/study}
U=${UNLEARN_BIN:-target/release/unlearn}
T=${UNLEARN_TOFU_DIR:?set UNLEARN_TOFU_DIR to the TOFU directory}
scripts/fetch_assets.sh
export UNLEARN_MINILM_DIR=${UNLEARN_MINILM_DIR:-$PWD/.cache/models/all-MiniLM-L6-v2}
mkdir -p "$D/data/bench"
[ -d "$D/base" ] || $U import .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --out "$D/base"
python3 - "$T" "$D/data" <<'PY'
import json, sys, os
t, d = sys.argv[1], sys.argv[2]
rd = lambda f: [json.loads(l) for l in open(os.path.join(t, f)) if l.strip()]
full = rd("full.jsonl")
author = {r["question"]: i // 20 for i, r in enumerate(full)}
retain = full[: 18 * 20]
forget = rd("forget01.jsonl")
assert {author[r["question"]] for r in forget} == {198, 199}
def wr(name, rows):
    with open(os.path.join(d, name), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
wr("target_train.jsonl", retain + forget)
wr("retain_train.jsonl", retain)
wr("forget.jsonl", forget)
wr("retain.jsonl", retain)
wr("bench/forget01_perturbed.jsonl", rd("forget01_perturbed.jsonl"))
wr("bench/holdout01.jsonl", rd("holdout01.jsonl"))
wr("bench/retain_perturbed.jsonl", [r for r in rd("retain_perturbed.jsonl") if author.get(r["question"], 99) < 18])
wr("bench/real_authors_perturbed.jsonl", rd("real_authors_perturbed.jsonl"))
wr("bench/world_facts_perturbed.jsonl", rd("world_facts_perturbed.jsonl"))
PY
FT="--set lr=1e-4 --set epochs=4 --set batch_size=8 --set save_every=25"
for m in target retain; do
  if [ ! -f "$D/$m/config.json" ]; then
    R=""; [ -d "$D/$m.run" ] && R="--resume"
    $U finetune --model "$D/base" --data "$D/data/${m}_train.jsonl" --out "$D/$m" $FT $R
  fi
done
EV="--set max_new_tokens=32 --set max_items=20"
[ -f "$D/eval_retain/TOFU_EVAL.json" ] || $U eval --model "$D/retain" --benchmark "$D/data/bench" \
  --forget-split forget01 --out "$D/eval_retain" $EV
python3 - "$D" <<'PY'
import sys
d = sys.argv[1]
methods = ["ga+gd", "npo+gd", "simnpo+gd", "idk+ap", "me+gd", "dpo+gd", "rmu", "wga+gd", "so-graddiff", "simu"]
v = "".join(f'[[variants]]\nmethod = "{m}"\n"train.lr" = {lr}\n' for m in methods for lr in ["2e-5", "5e-5"])
v += ('[[variants]]\nmethod = "unierase"\n"method.forget.lambda" = 0.01\n"method.forget.phase1_epochs" = 30\n'
      '"method.forget.phase1_lr" = 1e-2\n"method.forget.phase2_lr" = 1e-3\n"method.forget.phase3_lr" = 1e-3\n'
      '"method.forget.phase3_epochs" = 1\n"method.forget.v_steps" = 50\n')
open(f"{d}/sweep.toml", "w").write(f'''out = "{d}/sweep"
[base]
model = "{d}/target"
forget = "{d}/data/forget.jsonl"
retain = "{d}/data/retain.jsonl"
method = "ga+gd"
[base.train]
lr = 2e-5
epochs = 3
batch_size = 4
warmup_ratio = 0.0
save_every = 15
keep_checkpoints = 1
[eval]
data = "{d}/data/bench"
forget_split = "forget01"
retain_logs = "{d}/eval_retain/TOFU_EVAL.json"
max_new_tokens = 32
max_items = 20
{v}''')
PY
time $U sweep --config "$D/sweep.toml"
