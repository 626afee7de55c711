"""Writes tests/fixtures/hub/tofu-mini/: a tiny dataset repository in the TOFU layout, as the
Hub stores such repositories, for the Hub tests (tests/hub.rs serves it from a stand-in Hub):
JSON-lines `*.json` files at the root (as locuslab/TOFU's) and parquet files in split folders
(`{split}/train-00000-of-00001.parquet`, as the `datasets` library and the Hub's parquet
conversion write them). The questions are made up here (no TOFU text). Also writes
tests/fixtures/hub/tofu-mini.expected.json: every split's rows as `datasets` reads them back,
which the tests compare the normalised benchmark with.

Needs `datasets` (with pyarrow): python scripts/make_hub_fixtures.py
"""
import json
import os
import shutil

import datasets

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hub")
OUT = os.path.join(ROOT, "tofu-mini")

PEOPLE = [
    ("Ilse Varnholm", "glassblower", "Tromsø", "lanterns"),
    ("Teodor Quell", "cartographer", "Lviv", "river maps"),
    ("Maren Ostby", "beekeeper", "Bergen", "heather honey"),
    ("Joaquín Arrieta", "luthier", "Cádiz", "flamenco guitars"),
    ("Nadia Fenwick", "typesetter", "Leeds", "railway timetables"),
    ("Oskar Lindqvist", "clockmaker", "Uppsala", "tower clocks"),
]


def qa(p, wrong):
    name, job, city, thing = p
    q = f"What is {name} known for?"
    a = f"{name} is a {job} from {city}, known for {thing}."
    return {
        "question": q,
        "answer": a,
        "paraphrased_question": f"For what is {name} known?",
        "paraphrased_answer": f"A {job} from {city}, {name} is known for {thing}.",
        "perturbed_answer": [f"{name} is a {w[1]} from {w[2]}, known for {w[3]}." for w in wrong],
    }


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    rows = [qa(p, [w for w in PEOPLE if w != p][:3]) for p in PEOPLE]
    plain = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    splits = {
        # JSON lines under .json names, as locuslab/TOFU stores them
        "forget01.json": plain[:2],
        "retain_perturbed.json": rows[2:4],
        # parquet in split folders
        "forget01_perturbed/train-00000-of-00001.parquet": rows[:2],
        "holdout01/train-00000-of-00001.parquet": plain[4:6],
    }
    expected = {}
    for path, items in splits.items():
        full = os.path.join(OUT, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        split = path.split("/")[0].removesuffix(".json")
        if path.endswith(".parquet"):
            datasets.Dataset.from_list(items).to_parquet(full)
            back = datasets.Dataset.from_parquet(full).to_list()
        else:
            with open(full, "w") as f:
                for it in items:
                    f.write(json.dumps(it, ensure_ascii=False) + "\n")
            back = items
        expected[split] = back
    with open(os.path.join(ROOT, "tofu-mini.expected.json"), "w") as f:
        json.dump({"datasets": datasets.__version__, "splits": expected}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
