"""Reference values for the metric unit tests (run once; needs rouge_score, nltk, scipy).

  python scripts/make_metric_refs.py

Writes tests/fixtures/rouge_ref.json:
- `stems`: NLTK Porter stems of ~4000 English words taken from the docstrings of installed Python
  packages (no benchmark text), plus classic Porter test words;
- `tofu_pairs`: rouge_score ROUGE-L (use_stemmer=True) of TOFU answers vs their paraphrased /
  perturbed answers, stored as (file, line, kind) + scores only: TOFU text is not committed, the
  Rust test reads it from ../shared/data/tofu;
- `pairs`: edge cases with their text.
"""
import json, os, re
from nltk.stem import porter
from rouge_score import rouge_scorer
import nltk, rouge_score

HERE = os.path.dirname(os.path.abspath(__file__))
TOFU = os.path.join(HERE, "..", "..", "shared", "data", "tofu")
FILES = ["forget10_perturbed.jsonl", "real_authors_perturbed.jsonl", "world_facts_perturbed.jsonl"]
rows = [(f, i, json.loads(l)) for f in FILES for i, l in enumerate(open(os.path.join(TOFU, f)))]
st = porter.PorterStemmer()
import glob, random
site = os.path.dirname(nltk.__file__)
text = " ".join(open(f, encoding="utf-8", errors="ignore").read() for f in sorted(glob.glob(site + "/**/*.py", recursive=True)))
vocab = sorted({w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3})
random.seed(0)
words = sorted(random.sample(vocab, min(4000, len(vocab))))
extra = ["caresses", "ponies", "ties", "skies", "dying", "agreed", "feed", "hopping", "falling", "filing", "happy", "sky",
         "relational", "conditional", "rational", "valenci", "hesitanci", "digitizer", "conformabli", "radicalli",
         "differentli", "vileli", "analogousli", "vietnamization", "predication", "operator", "feudalism", "decisiveness",
         "hopefulness", "callousness", "formaliti", "sensitiviti", "sensibiliti", "triplicate", "formative", "formalize",
         "electriciti", "electrical", "hopeful", "goodness", "revival", "allowance", "inference", "airliner", "gyroscopic",
         "adjustable", "defensible", "irritant", "replacement", "adjustment", "dependent", "adoption", "homologou",
         "communism", "activate", "angulariti", "homologous", "effective", "bowdlerize", "probate", "rate", "cease",
         "controll", "roll", "generously", "analogi", "fulli", "yyyy", "sayyid", "toying", "innings", "news", "proceeding"]
stems = {w: st.stem(w) for w in words + extra}
sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
pairs, tofu_pairs = [], []
def score(t, p):
    s = sc.score(t, p)["rougeL"]
    return {"precision": s.precision, "recall": s.recall, "fmeasure": s.fmeasure}
def add(t, p):
    pairs.append({"target": t, "prediction": p, **score(t, p)})
for f, i, r in rows[:150] + rows[400:460] + rows[500:560]:
    if "paraphrased_answer" in r:
        tofu_pairs.append({"file": f, "line": i, "kind": "paraphrased_answer", **score(r["answer"], r["paraphrased_answer"])})
    tofu_pairs.append({"file": f, "line": i, "kind": "perturbed_answer.0", **score(r["answer"], r["perturbed_answer"][0])})
for t, p in [("", "abc"), ("abc", ""), ("The cat sat.", "the CAT sat"), ("Élan vital, naïve café!", "elan vital naive cafe"),
             ("1,234.5 units", "1 234 5 unit"), ("don't stop", "do n't stop"), ("İstanbul", "istanbul"), ("a a a b", "a b a")]:
    add(t, p)
out = os.path.join(HERE, "..", "tests", "fixtures", "rouge_ref.json")
json.dump({"nltk": nltk.__version__, "stems": stems, "pairs": pairs, "tofu_pairs": tofu_pairs}, open(out, "w"), indent=0, ensure_ascii=False)
print(len(stems), "stems", len(pairs), "pairs", len(tofu_pairs), "TOFU pairs ->", out)

# Two-sample KS test references (tests/fixtures/ks_ref.json).
import numpy as np
from scipy import stats
import scipy
rng = np.random.default_rng(0)
cases = []
def ks(name, x, y):
    r = stats.ks_2samp(x, y)
    cases.append({"name": name, "x": [float(v) for v in x], "y": [float(v) for v in y],
                  "statistic": float(r.statistic), "pvalue": float(r.pvalue)})
for n1, n2 in [(1, 1), (1, 3), (3, 5), (5, 7), (10, 10), (10, 15), (20, 20), (40, 40), (40, 37), (100, 100),
               (200, 200), (400, 400), (40, 400), (123, 77), (400, 391), (7, 300)]:
    for shift in [0.0, 0.3, 1.0]:
        ks(f"normal {n1}x{n2} shift {shift}", rng.normal(0, 1, n1), rng.normal(shift, 1, n2))
ks("ties", [1, 1, 2, 2, 3, 3, 3], [1, 2, 2, 2, 4])
ks("identical", [0.5] * 10, [0.5] * 12)
ks("disjoint", list(range(30)), [v + 100 for v in range(30)])
ks("truth-ratio-like", rng.beta(2, 5, 40), rng.beta(2, 3, 40))
out = os.path.join(HERE, "..", "tests", "fixtures", "ks_ref.json")
json.dump(cases, open(out, "w"))
print(len(cases), "KS cases (scipy", scipy.__version__, ") ->", out)
