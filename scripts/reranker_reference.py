"""Reference logits for the candle cross-encoder test.

Builds the seeded test cross-encoder (all-MiniLM-L6-v2 + pooler and classifier head filled by the
formula of inference/src/test_model.rs), runs Python transformers' BertForSequenceClassification on
fixed (query, passage) pairs, and writes the pairs and logits to a JSON fixture.
Usage: reranker_reference.py MINILM_DIR OUT_JSON
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertForSequenceClassification


def seeded(seed, shape, scale):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    v = (i * np.uint64(2654435761) + np.uint64(seed * 40503)) % np.uint64(2**32)
    x = (v.astype(np.float64) / 4294967296.0 - 0.5) * scale
    return torch.from_numpy(x.astype(np.float32).reshape(shape))


def build(base, out):
    with open(os.path.join(base, "config.json")) as f:
        config = json.load(f)
    hidden = config["hidden_size"]
    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {"0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(os.path.join(base, name), os.path.join(out, name))
    tensors = {f"bert.{k}": v for k, v in load_file(os.path.join(base, "model.safetensors")).items()
               if not k.startswith("pooler.")}
    tensors["bert.pooler.dense.weight"] = seeded(1, (hidden, hidden), 0.1)
    tensors["bert.pooler.dense.bias"] = seeded(2, (hidden,), 0.1)
    tensors["classifier.weight"] = seeded(3, (1, hidden), 0.5)
    tensors["classifier.bias"] = seeded(4, (1,), 0.5)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "model.safetensors"))


LONG = ("The history of the lighthouse is a history of coastal trade. Before electric lamps, keepers "
        "trimmed wicks and polished lenses through the night, and a single missed hour could put a ship "
        "on the rocks. Fresnel's lens bent light from a small flame into a beam visible for twenty miles. ")

PAIRS = [
    ("how do plants make food", "Photosynthesis converts light energy into chemical energy in plants."),
    ("how do plants make food", "The stock market fell sharply on Monday."),
    ("who built the eiffel tower", "The Eiffel Tower was designed by the company of Gustave Eiffel."),
    ("who built the eiffel tower", "Mount Everest is the highest mountain on Earth."),
    ("rust memory safety", "Rust guarantees memory safety without a garbage collector."),
    ("a", "b"),
    ("lighthouse keepers at night", LONG * 2),
    ("lighthouse keepers at night " * 20, LONG * 8),  # well past 512 tokens: truncation
]


def main():
    base, out_json = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as d:
        build(base, d)
        tok = AutoTokenizer.from_pretrained(d)
        model = BertForSequenceClassification.from_pretrained(d).eval()
        queries = [q for q, _ in PAIRS]
        passages = [p for _, p in PAIRS]
        counts = [len(tok(q, p, truncation=False)["input_ids"]) for q, p in PAIRS]
        assert max(counts) > 512, counts
        enc = tok(queries, passages, padding=True, truncation="longest_first", max_length=512,
                  return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[:, 0].tolist()
        head_sum = float(seeded(3, (1, 384), 0.5).sum())
    data = {
        "made_by": "scripts/make-reranker-reference.sh (transformers BertForSequenceClassification, CPU)",
        "max_tokens": 512,
        "classifier_weight_sum": head_sum,
        "items": [{"query": q, "passage": p, "tokens_untruncated": c, "logit": l}
                  for (q, p), c, l in zip(PAIRS, counts, logits)],
    }
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(PAIRS)} reference logits to {out_json}; token counts {counts}; logits {logits}")


if __name__ == "__main__":
    main()
