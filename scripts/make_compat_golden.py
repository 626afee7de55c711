#!/usr/bin/env python3
"""Golden values for `eval.compat = "open_unlearning"` (tests/compat_ou.rs, issue #18).

Runs open-unlearning's own evaluation code (its preprocessing, collator and metric functions,
imported from a checkout of https://github.com/locuslab/open-unlearning given on the command
line) on the fixture in FIXTURE_DIR: a tiny Llama whose pad token is its end-of-turn token
<|im_end|>, as SmolLM2's is, a forget set with paraphrased and perturbed answers and a holdout
set. Writes FIXTURE_DIR/golden.json with per-item values of every metric the compat mode
reproduces, in open-unlearning's layout.

    python scripts/make_compat_golden.py --open-unlearning PATH/open-unlearning tests/fixtures/compat_ou

Needs open-unlearning's pinned transformers 4.45.1 and torch, omegaconf, rouge_score,
scikit-learn, scipy, datasets, hydra-core (a virtual environment is simplest).
"""
import argparse
import json
import os
import sys

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--open-unlearning", required=True, help="checkout of open-unlearning")
    ap.add_argument("fixture")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument(
        "--revision", help="open-unlearning's commit, when the checkout is not a git repository"
    )
    a = ap.parse_args()
    src = os.path.join(a.open_unlearning, "src")
    sys.path.insert(0, src)
    # the `evals` package's __init__ imports its lm-evaluation-harness runner, which the metric
    # functions do not need: register the package without running it
    import types

    pkg = types.ModuleType("evals")
    pkg.__path__ = [os.path.join(src, "evals")]
    sys.modules["evals"] = pkg
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from data.utils import preprocess_chat_instance
    from data.collators import DataCollatorForSupervisedDataset
    from evals.metrics.memorization import (
        probability,
        truth_ratio,
        rouge,
        exact_memorization,
        extraction_strength,
    )
    from evals.metrics.mia.utils import mia_auc
    from evals.metrics.mia.loss import LOSSAttack
    from evals.metrics.mia.zlib import ZLIBAttack
    from evals.metrics.mia.min_k import MinKProbAttack
    from evals.metrics.mia.min_k_plus_plus import MinKPlusPlusAttack
    from evals.metrics.mia.gradnorm import GradNormAttack
    import transformers

    torch.manual_seed(0)
    mdir = os.path.join(a.fixture, "model")
    tok = AutoTokenizer.from_pretrained(mdir)
    if tok.pad_token_id is None:  # as open-unlearning's get_model does
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(mdir, torch_dtype=torch.float32)
    model.eval()
    template = {"apply_chat_template": True}

    def read(name):
        with open(os.path.join(a.fixture, name)) as f:
            return [json.loads(l) for l in f if l.strip()]

    forget = read("forget_perturbed.jsonl")
    holdout = read("holdout.jsonl")

    class DS(torch.utils.data.Dataset):
        """QADataset's items without `datasets`: one answer, or a list of answers."""

        def __init__(self, rows, key, generate=False):
            self.rows, self.key, self.generate = rows, key, generate

        def __len__(self):
            return len(self.rows)

        def item(self, q, ans, i):
            t = preprocess_chat_instance(tok, template, [q], [ans], 512, self.generate)
            return {**t, "index": i}

        def __getitem__(self, i):
            r = self.rows[i]
            ans = r[self.key]
            if isinstance(ans, list):
                return {j: self.item(r["question"], x, i) for j, x in enumerate(ans)}
            return self.item(r["question"], ans, i)

    right = DataCollatorForSupervisedDataset(tok, padding_side="right", index="index")
    left = DataCollatorForSupervisedDataset(tok, padding_side="left", index="index")
    bs = a.batch_size
    fn = lambda m: m._metric_fn  # the undecorated metric function

    out = {
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "open_unlearning": "locuslab/open-unlearning "
            + (a.revision or git_head(a.open_unlearning)),
        },
        "max_new_tokens": a.max_new_tokens,
    }
    prob = fn(probability)(model, data=DS(forget, "answer"), collators=right, batch_size=bs)
    para = fn(probability)(
        model, data=DS(forget, "paraphrased_answer"), collators=right, batch_size=bs
    )
    pert = fn(probability)(
        model, data=DS(forget, "perturbed_answer"), collators=right, batch_size=bs
    )
    out["forget_Q_A_Prob"] = prob
    out["forget_Q_A_PARA_Prob"] = para
    out["forget_Q_A_PERT_Prob"] = pert
    out["forget_truth_ratio"] = fn(truth_ratio)(
        model,
        pre_compute={"correct": para, "wrong": pert},
        aggregator="closer_to_1_better",
    )
    gen = OmegaConf.create(
        {
            "do_sample": False,
            "top_p": None,
            "temperature": None,
            "max_new_tokens": a.max_new_tokens,
            "use_cache": True,
        }
    )
    out["forget_Q_A_ROUGE"] = fn(rouge)(
        model,
        tokenizer=tok,
        data=DS(forget, "answer", generate=True),
        collators=left,
        batch_size=bs,
        generation_args=gen,
        rouge_type="rougeL_recall",
    )
    out["exact_memorization"] = fn(exact_memorization)(
        model, data=DS(forget, "answer"), collators=right, batch_size=bs
    )
    out["extraction_strength"] = fn(extraction_strength)(
        model, data=DS(forget, "answer"), collators=right, batch_size=bs
    )
    mia_data = {"forget": DS(forget, "answer"), "holdout": DS(holdout, "answer")}
    for name, cls in [
        ("mia_loss", LOSSAttack),
        ("mia_zlib", ZLIBAttack),
        ("mia_min_k", MinKProbAttack),
        ("mia_min_k_plus_plus", MinKPlusPlusAttack),
    ]:
        out[name] = mia_auc(
            cls, model, mia_data, right, bs, k=0.4, tokenizer=tok
        )
    # mia_gradnorm's configuration: batch size 1, p = 2 (it backpropagates each item alone
    # whatever the batch size; it leaves the model in eval mode)
    out["mia_gradnorm"] = mia_auc(GradNormAttack, model, mia_data, right, 1, p=2)
    with open(os.path.join(a.fixture, "golden.json"), "w") as f:
        json.dump(out, f, indent=1, default=float)
    print("wrote", os.path.join(a.fixture, "golden.json"))


def git_head(path):
    try:
        import subprocess

        return (
            subprocess.check_output(["git", "-C", path, "rev-parse", "--short", "HEAD"])
            .decode()
            .strip()
        )
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
