#!/usr/bin/env python3
"""Reference logits for the DeBERTa-v2/v3 sequence classifiers (src/model/deberta.rs), issue #18.

Writes two tiny random DebertaV2ForSequenceClassification directories with a tokenizer.json and
their logits on sentence pairs (a padded batch, and pairs long enough for the log-bucketed
relative positions), as tests/fixtures/tiny_nli_deberta_{v3,v2}/:

- v3: the layout of microsoft/deberta-v3-base and sileod/deberta-v3-base-tasksource-nli (the
  closer-look paper's NLI model): relative attention with position buckets, shared
  attention keys, p2c|c2p, LayerNorm on the relative embeddings, no absolute positions, no token
  types; a SentencePiece-style Unigram tokenizer with Metaspace pre-tokenisation.
- v2: the DeBERTa-v2 options v3 leaves out: separate position key/query projections,
  absolute position embeddings, token types, an embedding projection (embedding_size != hidden),
  the convolution after the first layer, and unbucketed relative positions.

Usage: python scripts/make_deberta_ref.py    (needs torch, transformers, tokenizers)
"""
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
import transformers

PAIRS = [
    ("the cat sat on the mat", "a cat is sitting"),
    ("she was born in a small town", "she was born in paris"),
    ("no", "the answer is yes and it is long"),
    (
        "the cat sat on the mat and the cat sat on the mat and she was born in a small town "
        "and the answer is yes",
        "the cat is sitting on a mat in paris and it is long and the answer is no",
    ),
]
WORDS = (
    "the cat sat on mat a is sitting she was born in small town paris no answer yes and it long"
).split()
here = os.path.dirname(os.path.abspath(__file__))
fix = os.path.join(here, "..", "tests", "fixtures")


def tokenizer(out):
    """A Unigram tokenizer shaped like DeBERTa-v3's: [PAD] [CLS] [SEP] [UNK], ▁-prefixed pieces."""
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    pieces = [(s, 0.0) for s in specials]
    pieces += [("▁" + w, -2.0 - 0.1 * i) for i, w in enumerate(WORDS)]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("▁", -6.0)]
    t = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    t.normalizer = normalizers.Sequence([normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    t.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    t.save(os.path.join(out, "tokenizer.json"))
    return t, len(pieces)


def make(kind):
    out = os.path.join(fix, f"tiny_nli_deberta_{kind}")
    os.makedirs(out, exist_ok=True)
    tok, v = tokenizer(out)
    torch.manual_seed(0)
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    common = dict(
        vocab_size=v,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        hidden_act="gelu",
        id2label=labels,
        label2id={b: a for a, b in labels.items()},
        pad_token_id=0,
        layer_norm_eps=1e-7,
        relative_attention=True,
        max_position_embeddings=64,
        pooler_hidden_act="gelu",
        # large enough weights that attention is peaked: with the default 0.02 the scores are
        # near zero, attention near uniform, and relative positions would barely show
        initializer_range=0.5,
    )
    if kind == "v3":
        cfg = DebertaV2Config(
            **common,
            type_vocab_size=0,
            position_biased_input=False,
            position_buckets=8,
            max_relative_positions=-1,
            share_att_key=True,
            pos_att_type="p2c|c2p",
            norm_rel_ebd="layer_norm",
        )
    else:
        cfg = DebertaV2Config(
            **common,
            type_vocab_size=2,
            position_biased_input=True,
            max_relative_positions=12,
            share_att_key=False,
            pos_att_type="c2p|p2c",
            norm_rel_ebd="layer_norm",
            embedding_size=12,
            conv_kernel_size=3,
            conv_act="gelu",
        )
    model = DebertaV2ForSequenceClassification(cfg)
    # random, not zero, biases and norms so every parameter matters
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(out)
    encs = [tok.encode(a, b) for a, b in PAIRS]
    t = max(len(e.ids) for e in encs)
    ids, types, mask = [], [], []
    for e in encs:
        n = len(e.ids)
        ids.append(e.ids + [0] * (t - n))
        types.append(e.type_ids + [0] * (t - n))
        mask.append([1] * n + [0] * (t - n))
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if cfg.type_vocab_size > 0:
        kw["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        logits = model(**kw).logits
    json.dump(
        {
            "pairs": PAIRS,
            "token_counts": [len(e.ids) for e in encs],
            "ids_first": encs[0].ids,
            "logits": logits.tolist(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        open(os.path.join(out, "ref.json"), "w"),
        indent=1,
    )
    print("wrote", out)


if __name__ == "__main__":
    make("v3")
    make("v2")
