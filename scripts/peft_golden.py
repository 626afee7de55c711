#!/usr/bin/env python3
"""Golden file of tests/lora.rs: our LoRA adapters read by Python `peft`, and peft's read by us.

Writes tests/fixtures/lora/:
  base/   a tiny random Llama (`unlearn init`, hidden 32, 1 layer)
  ours/   an adapter trained by `unlearn run` with [lora] (GA, rank 2, 3 epochs)
  peft/   an adapter written by peft itself (random A and B: init_lora_weights=False, seed 0)
  golden.json  logits of base + each adapter as peft computes them (PeftModel.from_pretrained)
               and of peft's merge_and_unload(), on one fixed id sequence

Run from the repository root after `cargo build --release`:
  python3 scripts/peft_golden.py
Needs torch, transformers and peft (checked with torch 2.x, transformers 5.24, peft 0.21.2).
"""
import json
import os
import shutil
import subprocess
import sys

import torch
import peft
import transformers
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FX = os.path.join(ROOT, "tests", "fixtures", "lora")
BIN = os.path.join(ROOT, "target", "release", "unlearn")


def sh(*args, cwd):
    subprocess.run([BIN, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def logits(model, ids):
    with torch.no_grad():
        return [float("%.7g" % x) for x in model(torch.tensor([ids])).logits[0].float().flatten().tolist()]


def main():
    shutil.rmtree(FX, ignore_errors=True)
    os.makedirs(FX)
    with open(os.path.join(FX, "forget.jsonl"), "w") as f:
        f.write('{"question": "Code for apple?", "answer": "zebra 41"}\n')
        f.write('{"question": "Code for pear?", "answer": "lion 7"}\n')
    sh("init", "--out", "base", "--hidden", "32", "--layers", "1", "--seed", "3", cwd=FX)
    sh("run", "--set", "model=base", "--set", "forget=forget.jsonl", "--set", "out=ours",
       "--set", "method=ga", "--set", "lora.r=2", "--set", "lora.alpha=4",
       "--set", "train.lr=1e-2", "--set", "train.epochs=3", "--set", "train.batch_size=2",
       cwd=FX)
    shutil.rmtree(os.path.join(FX, "ours.run"))
    os.remove(os.path.join(FX, "forget.jsonl"))
    base_dir = os.path.join(FX, "base")

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                          init_lora_weights=False, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(base, cfg)
    pm.save_pretrained(os.path.join(FX, "peft"))

    ids = [b + 3 for b in "Code for apple? zebra 41".encode()]
    out = {
        "ids": ids,
        "tolerance": 1e-4,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }
    for name in ["ours", "peft"]:
        d = os.path.join(FX, name)
        # committed with the base named relative to the fixture (the test rewrites it)
        c = json.load(open(os.path.join(d, "adapter_config.json")))
        c["base_model_name_or_path"] = "base"
        json.dump(c, open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
        base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
        m = peft.PeftModel.from_pretrained(base, d).eval()
        n_adapted = sum(1 for n, _ in m.named_modules() if n.endswith("lora_A"))
        out[f"{name}_adapted_modules"] = n_adapted
        out[f"{name}_logits"] = logits(m, ids)
        out[f"{name}_merged_logits"] = logits(m.merge_and_unload(), ids)
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    out["base_logits"] = logits(base, ids)
    for name in ["ours", "peft"]:
        diff = max(abs(a - b) for a, b in zip(out[f"{name}_logits"], out["base_logits"]))
        out[f"{name}_max_change_from_base"] = diff
        assert diff > 1e-3, f"{name}: the adapter does not change the logits"
    json.dump(out, open(os.path.join(FX, "golden.json"), "w"))
    print({k: v for k, v in out.items() if not k.endswith("logits")}, file=sys.stderr)


if __name__ == "__main__":
    main()
