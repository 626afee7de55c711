"""Writes tests/fixtures/spm_tokenizer/: a tiny SentencePiece BPE tokenizer with byte fallback, the
kind Llama 2, TinyLlama and Mistral ship, as transformers converts it (tokenizer.json,
tokenizer_config.json), plus golden.json: the ids the `sentencepiece` library and transformers
give a few texts, for tests/export.rs (GGUF export of SentencePiece vocabularies, issue #22).

    pip install sentencepiece transformers
    python scripts/make_spm_fixture.py tests/fixtures/spm_tokenizer
"""
import json
import os
import sys
import tempfile

import sentencepiece as spm
import transformers
from transformers import LlamaTokenizer

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
corpus = """The author was born in a small town by the sea and wrote about the lighthouse keepers.
Her first novel, published in 1998, told the story of a family of fishermen and their boats.
She studied literature at the university and later taught writing to young students.
Critics praised the quiet rhythm of her sentences and the warmth of her characters.
In interviews she said that the sea was her first teacher and her oldest friend.
Her father was a carpenter; her mother worked as a nurse in the town's hospital.
The books have been translated into twelve languages, including Japanese and Portuguese.
Café, naïve, Zürich and São Paulo appear in her travel diaries, with 3 maps and 42 photos.
""".strip().splitlines()
texts = [
    "The author was born in a small town.",
    "Who is the author's father? A carpenter, in Zürich!",
    "  two leading spaces, tabs\tand\nnewlines",
    "unseen glyphs: 東京 🙂 ß",
    "",
]
with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "corpus.txt")
    with open(src, "w") as f:
        f.write("\n".join(corpus * 4))
    prefix = os.path.join(tmp, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=src, model_prefix=prefix, model_type="bpe", vocab_size=400,
        byte_fallback=True, character_coverage=1.0, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    # transformers converts tokenizer.model (merges from the piece scores, Metaspace)
    tok = LlamaTokenizer.from_pretrained(tmp, legacy=False, add_bos_token=True)
    tok.save_pretrained(out)
for f in os.listdir(out):
    if f not in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(os.path.join(out, f))
golden = {
    "transformers": transformers.__version__,
    "sentencepiece": spm.__version__,
    "vocab_size": sp.get_piece_size(),
    "texts": [{"text": t, "sentencepiece": sp.encode(t), "transformers": tok(t)["input_ids"]}
              for t in texts],
}
with open(os.path.join(out, "golden.json"), "w") as f:
    json.dump(golden, f, indent=1, ensure_ascii=False)
    f.write("\n")
for t in golden["texts"]:
    same = [1] + t["sentencepiece"] == t["transformers"]
    print(repr(t["text"][:30]), len(t["transformers"]), "ids; sentencepiece agrees:", same)
