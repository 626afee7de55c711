#!/usr/bin/env bash
# The SmolLM2 audit of issue #22 (docs/robustness.md): after scripts/study_smollm2.sh, audit the
# model the study's leaderboard chose (forget-quality rule) for GA+GD, NPO+GD, ME+GD, IDK+AP, SIMU
# and UniErase, and the target itself as the baseline row, against the target as the original.
# Each audit is skipped when its AUDIT.json exists.
#   bash scripts/audit_smollm2.sh [DIR]   (default runs/study)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-runs/study}
U=${UNLEARN_BIN:-target/release/unlearn}
export UNLEARN_MINILM_DIR=${UNLEARN_MINILM_DIR:-$PWD/.cache/models/all-MiniLM-L6-v2}
mkdir -p "$D/audit"
python3 - "$D" > "$D/audit/models.tsv" <<'PY'
import json, sys
d = sys.argv[1]
lb = json.load(open(f"{d}/sweep/LEADERBOARD.json"))
best = {b["method"]: b for b in lb["best"]["forget_quality"]}
for m in ["ga+gd", "npo+gd", "me+gd", "idk+ap", "simu", "unierase"]:
    if m in best:
        print(f"{m}\t{d}/sweep/points/{best[m]['point']}/model")
# the baseline row last: the methods' rows are what the issue asks for
print(f"target\t{d}/target")
PY
while IFS=$'\t' read -r name model; do
  out="$D/audit/$name"
  [ -f "$out/AUDIT.json" ] && continue
  rm -rf "$out"
  echo "audit: $name ($model)"
  /usr/bin/time -f "audit $name: %e s, peak RSS %M KiB" \
    $U audit --model "$model" --original "$D/target" --benchmark "$D/data/bench" \
      --forget-split forget01 --out "$out" \
      --set eval.max_items=20 --set eval.max_new_tokens=32 \
      --set 'quantize=["q8_0","q4_0"]'
done < "$D/audit/models.tsv"
