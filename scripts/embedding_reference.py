"""Reference sentence embeddings for the candle embedder test.

Runs sentence-transformers on a local all-MiniLM-L6-v2 folder (mean pooling, L2 normalisation,
max_seq_length 256) and writes the texts, their token counts and their vectors to a JSON fixture.
Usage: embedding_reference.py MODEL_DIR OUT_JSON
"""
import json
import sys

from sentence_transformers import SentenceTransformer, models

LONG = (
    "The history of the lighthouse is a history of coastal trade. Before electric lamps, keepers "
    "trimmed wicks and polished lenses through the night, and a single missed hour could put a ship "
    "on the rocks. Fresnel's lens, introduced in 1823, bent light from a small flame into a beam "
    "visible for twenty miles, and within a few decades it had been installed along most of the "
    "Atlantic coast. Keepers lived in isolated stations with their families, recording the weather, "
    "the passing vessels and the oil they burned in careful logbooks that historians still read "
    "today. Automation arrived in the twentieth century: first clockwork rotation, then acetylene "
    "burners that lit themselves at dusk, and finally electric lamps controlled by photocells. By the "
    "1990s almost every lighthouse in the world ran without a resident keeper, and many of the old "
    "towers became museums, guest houses or simply landmarks that tourists photograph at sunset. "
    "Satellite navigation has made them less essential, yet sailors still say that nothing is as "
    "reassuring as the sweep of a familiar light on a dark and stormy night near a rocky shore, "
    "especially when the instruments fail and the sea is rising faster than anyone expected."
)
VERY_LONG = " ".join([LONG, LONG])  # well past 256 tokens: checks truncation

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "How do I reset my router password?",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Rust guarantees memory safety without a garbage collector.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "e = mc^2 !!! ??? ... --- ### $$$",
    "a",
    LONG,
    VERY_LONG,
]


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    word = models.Transformer(model_dir, max_seq_length=256)
    pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    vectors = model.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    tok = word.tokenizer
    counts = [len(tok(t, truncation=False)["input_ids"]) for t in TEXTS]
    assert any(c > 128 for c in counts), counts
    assert any(c > 256 for c in counts), counts
    data = {
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": 256,
        "made_by": "scripts/make-embedding-reference.sh (sentence-transformers, CPU)",
        "items": [
            {"text": t, "tokens_untruncated": c, "vector": [round(float(x), 8) for x in v]}
            for t, c, v in zip(TEXTS, counts, vectors)
        ],
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(TEXTS)} reference vectors to {out}; token counts {counts}")


if __name__ == "__main__":
    main()
