#!/usr/bin/env bash
# Exclusive Unlearning on the demo's tiny model (docs/exclusive.md): keep domain = the
# benchmark's world facts and real authors (general knowledge), everything else (the fictitious
# people) is to go. Prints the table of docs/exclusive.md. Usage: bash scripts/exclusive_tiny.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
U=${UNLEARN:-target/release/unlearn}
O=${1:-runs/exclusive}
mkdir -p "$O"
# the target model, trained and cached by the demo (and the benchmark files)
[ -f runs/demo/summary.json ] || $U demo --methods ga+gd --out runs/demo
T=$(python3 -c "import json;print(json.load(open('runs/demo/summary.json'))['model_dirs']['target'])")
B=runs/demo/benchmark
cat $B/world_facts_perturbed.jsonl $B/real_authors_perturbed.jsonl > $O/keep.jsonl
head -6 $B/retain_perturbed.jsonl > $O/relearn.jsonl
$U selfgen --model "$T" --count 200 --out $O/gen.jsonl --set max_new_tokens=48
TR="--set train.lr=1e-3 --set train.epochs=8 --set train.batch_size=8 --set train.warmup_ratio=0"
for m in exclusive exclusive-negce; do
  $U run --set model="\"$T\"" --set forget="\"$O/gen.jsonl\"" --set retain="\"$O/keep.jsonl\"" \
    --set out="\"$O/$m\"" --set method=$m $TR
done
# baseline: fine-tuning on the keep data alone, as many steps (200) at the same lr and batch
$U finetune --model "$T" --data $O/keep.jsonl --out $O/keep-only --set lr=1e-3 --set batch_size=8 \
  --set epochs=1000 --set max_steps=200 --set warmup_ratio=0
mkdir -p $O/target && cp "$T"/* $O/target/
for m in target exclusive exclusive-negce keep-only; do
  $U eval --model $O/$m --benchmark exclusive --keep $O/keep.jsonl --ood $B/retain_perturbed.jsonl \
    --probes $B/forget10.jsonl --out $O/$m.eval > /dev/null
  $U attack relearn --model $O/$m --data $O/relearn.jsonl --eval $B/retain_perturbed.jsonl \
    --original $O/target --out $O/$m.relearned --set lr=5e-4 --set max_steps=10 > /dev/null
done
python3 - "$O" <<'PY'
import json, math, sys
o = sys.argv[1]
cols = ["ood_loss", "ood_loss_over_chance", "keep_Q_A_Prob", "keep_Q_A_ROUGE", "probe_plain_on_topic",
        "probe_role_play_on_topic", "probe_prefix_injection_on_topic", "probe_ignore_previous_on_topic"]
print("| model | " + " | ".join(cols) + " | relearned ood prob (10 steps) |")
print("|---" * (len(cols) + 2) + "|")
for m in ["target", "exclusive", "exclusive-negce", "keep-only"]:
    s = json.load(open(f"{o}/{m}.eval/EXCLUSIVE_SUMMARY.json"))
    r = json.load(open(f"{o}/{m}.relearned.run/relearn.json"))
    cells = [f"{s[c]:.3f}" if isinstance(s[c], (int, float)) else "-" for c in cols]
    print(f"| {m} | " + " | ".join(cells) + f" | {r['before']['prob']:.3f} -> {r['after']['prob']:.3f} |")
PY
