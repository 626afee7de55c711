#!/usr/bin/env bash
# The closer-look real-world scenario (issue #26, docs/benchmarks.md) at CPU size on
# SmolLM2-135M-Instruct: forget the first PEOPLE people of real_world/forget.jsonl (task_id
# 1..PEOPLE), keep the first PEOPLE neighbours; training targets are the model's own answers
# (`unlearn answers`), evaluation uses the golden answers (`answer_field`), the neighbours are the
# retain set (`retain_split`). Then the general-ability fixtures of tests/fixtures/harness on the
# model before and after. Each step is skipped when its output exists.
#   bash scripts/realworld_smollm2.sh REAL_WORLD_DIR [OUT]   (default OUT: runs/realworld)
set -euo pipefail
cd "$(dirname "$0")/.."
RW=${1:?give the real_world data directory (forget.jsonl, neighbor.jsonl, *_perturbed.jsonl)}
D=${2:-runs/realworld}
U=${UNLEARN_BIN:-target/release/unlearn}
PEOPLE=${PEOPLE:-2}
scripts/fetch_assets.sh
export UNLEARN_MINILM_DIR=${UNLEARN_MINILM_DIR:-$PWD/.cache/models/all-MiniLM-L6-v2}
mkdir -p "$D/data" "$D/bench"
[ -d "$D/base" ] || $U import .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --out "$D/base"
python3 - "$RW" "$D" "$PEOPLE" <<'PY'
import json, sys, os
rw, d, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
rd = lambda f: [json.loads(l) for l in open(os.path.join(rw, f)) if l.strip()]
def people(rows, n):
    names = []
    for r in rows:
        if r["name"] not in names:
            names.append(r["name"])
    keep = set(names[:n])
    return [r for r in rows if r["name"] in keep]
def wr(name, rows):
    with open(os.path.join(d, name), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
wr("data/forget.jsonl", [r for r in rd("forget.jsonl") if int(r["task_id"]) <= k])
wr("data/neighbor.jsonl", people(rd("neighbor.jsonl"), k))
wr("bench/forget_perturbed.jsonl", [r for r in rd("forget_perturbed.jsonl") if r["question"] in {x["question"] for x in rd("forget.jsonl") if int(x["task_id"]) <= k}])
wr("bench/neighbor_perturbed.jsonl", people(rd("neighbor_perturbed.jsonl"), k))
PY
for s in forget neighbor; do
  [ -f "$D/data/${s}_self.jsonl" ] || /usr/bin/time -f "answers $s: %e s" \
    $U answers --model "$D/base" --data "$D/data/$s.jsonl" --out "$D/data/${s}_self.jsonl" --set max_new_tokens=64
done
TR="--set train.lr=2e-5 --set train.epochs=3 --set train.batch_size=4"
# UniErase with the SmolLM2 settings of docs/unierase.md
UE="--set method.forget.lambda=0.01 --set method.forget.phase1_epochs=30 --set method.forget.phase1_lr=1e-2
 --set method.forget.phase2_lr=1e-3 --set method.forget.phase3_lr=1e-3 --set method.forget.phase3_epochs=1
 --set method.forget.v_steps=50"
for m in npo+gd idk+ap unierase; do
  n=${m/+/_}
  X=$TR; [ $m = unierase ] && X=$UE
  [ -f "$D/$n/config.json" ] || /usr/bin/time -f "run $m: %e s" \
    $U run --set model="$D/base" --set forget="$D/data/forget_self.jsonl" \
      --set retain="$D/data/neighbor_self.jsonl" --set out="$D/$n" --set method=$m $X
done
EV='--set max_new_tokens=32 --set retain_split="neighbor" --set answer_field="golden_answer" --set sets=["forget","retain"]'
for n in base npo_gd idk_ap unierase; do
  [ -f "$D/eval/$n/TOFU_EVAL.json" ] || /usr/bin/time -f "eval $n: %e s" \
    $U eval --model "$D/$n" --benchmark "$D/bench" --forget-split forget --out "$D/eval/$n" $EV
  for t in mmlu arc_challenge truthfulqa_mc1 wmdp_bio gsm8k triviaqa; do
    S=""; [ $t = mmlu -o $t = gsm8k ] && S="--set num_fewshot=2"
    [ -f "$D/general/$n/$t/${t}_EVAL.json" ] || $U eval --model "$D/$n" --benchmark $t \
      --data tests/fixtures/harness/$t --out "$D/general/$n/$t" --set max_gen_toks=48 $S > /dev/null
  done
done
python3 - "$D" <<'PY'
import json, sys
d = sys.argv[1]
keys = ["forget_Q_A_ROUGE", "forget_Q_A_Prob", "forget_refusal_rate", "retain_Q_A_ROUGE", "retain_Q_A_Prob", "retain_refusal_rate", "forget_efficacy", "closer_look_model_utility"]
tasks = [("mmlu", "acc,none"), ("arc_challenge", "acc,none"), ("truthfulqa_mc1", "acc,none"), ("wmdp_bio", "acc,none"), ("gsm8k", "exact_match,flexible-extract"), ("triviaqa", "exact_match,remove_whitespace")]
# the closer-look paper's downstream set: ARC-C, MMLU, TruthfulQA, TriviaQA, GSM8K (not WMDP)
downstream = {"mmlu", "arc_challenge", "truthfulqa_mc1", "gsm8k", "triviaqa"}
print("| model | " + " | ".join(keys) + " | " + " | ".join(t for t, _ in tasks) + " | downstream avg | words gsm8k/triviaqa | refusal gsm8k/triviaqa |")
print("|---" * (1 + len(keys) + len(tasks) + 3) + "|")
for n in ["base", "npo_gd", "idk_ap", "unierase"]:
    e = json.load(open(f"{d}/eval/{n}/TOFU_EVAL.json"))
    row = [("%.3f" % e[k]["agg_value"]) if e.get(k, {}).get("agg_value") is not None else "–" for k in keys]
    ds, words, refs = [], [], []
    for t, m in tasks:
        g = json.load(open(f"{d}/general/{n}/{t}/{t}_EVAL.json"))["results"]
        row.append("%.2f" % g[m])
        if t in downstream:
            ds.append(g[m])
        if "answer_words,none" in g:
            words.append("%.1f" % g["answer_words,none"])
            refs.append("%.2f" % g["refusal_rate,none"] if g.get("refusal_rate,none") is not None else "–")
    row += ["%.3f" % (sum(ds) / len(ds)), " / ".join(words), " / ".join(refs)]
    print(f"| {n} | " + " | ".join(row) + " |")
PY
