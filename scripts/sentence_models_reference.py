"""Reference vectors for sentence-transformers folders of every kind shoal reads.

Each variant is a folder made from the all-MiniLM-L6-v2 weights plus the small files a
sentence-transformers folder carries (modules.json, 1_Pooling/config.json, Dense layers with
seeded weights, prompts in config_sentence_transformers.json, sentence_bert_config.json), in the
legacy and the current file formats. sentence-transformers loads each folder and embeds a fixed
set of texts as queries, as documents and plainly; the fixture keeps the small files verbatim,
the Dense layers' seeds and the vectors, so the Rust test can build the same folders and compare
(inference/tests/sentence_models.rs). Dense weights use the formula of
inference/src/test_model.rs (`seeded_value`).

Usage: sentence_models_reference.py MODEL_DIR OUT_JSON
"""
import json
import os
import sys
import tempfile

from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer

# the seeded weights of inference/src/test_model.rs, as the reranker reference makes them
from reranker_reference import seeded

TEXTS = [
    "A man is eating a piece of bread.",
    "How do I reset my router password?",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "東京は日本の首都です。",
    "a",
    # longer than 256 tokens with any prompt: checks that the prompt stays and the text is cut
    " ".join(["The keeper trimmed the wick and polished the lens through the long night."] * 24),
]

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
DENSE = "sentence_transformers.models.Dense"
NORMALIZE = "sentence_transformers.models.Normalize"
# the names sentence-transformers 5 writes
TRANSFORMER_V5 = "sentence_transformers.base.modules.transformer.Transformer"
POOLING_V5 = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
DENSE_V5 = "sentence_transformers.base.modules.dense.Dense"
NORMALIZE_V5 = "sentence_transformers.sentence_transformer.modules.normalize.Normalize"


def legacy_pooling(*modes, include_prompt=True):
    flags = {
        "cls": "pooling_mode_cls_token",
        "max": "pooling_mode_max_tokens",
        "mean": "pooling_mode_mean_tokens",
        "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
        "weightedmean": "pooling_mode_weightedmean_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    config = {"word_embedding_dimension": 384}
    for mode, flag in flags.items():
        config[flag] = mode in modes
    config["include_prompt"] = include_prompt
    return config


def pooling(modes, include_prompt=True):
    return {"embedding_dimension": 384, "pooling_mode": modes, "include_prompt": include_prompt}


def modules(*kinds, transformer_path=""):
    out = []
    for i, (kind, path) in enumerate(kinds):
        out.append({"idx": i, "name": str(i), "path": path, "type": kind})
    if transformer_path:
        out[0]["path"] = transformer_path
    return out


def dense(in_f, out_f, activation, bias=True, seed=7):
    return {
        "config": {
            "in_features": in_f,
            "out_features": out_f,
            "bias": bias,
            "activation_function": activation,
        },
        "seed": seed,
        "scale": 0.25,
    }


SBERT = {"max_seq_length": 256, "do_lower_case": False}

VARIANTS = [
    {
        "name": "cls-legacy-unnormalised",
        "modules": modules((TRANSFORMER, ""), (POOLING, "1_Pooling")),
        "pooling": legacy_pooling("cls"),
    },
    {
        "name": "max-legacy",
        "modules": modules((TRANSFORMER, ""), (POOLING, "1_Pooling"), (NORMALIZE, "2_Normalize")),
        "pooling": legacy_pooling("max"),
    },
    {
        "name": "lasttoken",
        "modules": modules((TRANSFORMER_V5, ""), (POOLING_V5, "1_Pooling")),
        "pooling": pooling("lasttoken"),
    },
    {
        "name": "mean-sqrt-len-legacy",
        "modules": modules((TRANSFORMER, ""), (POOLING, "1_Pooling")),
        "pooling": legacy_pooling("mean_sqrt_len_tokens"),
    },
    {
        "name": "weightedmean",
        "modules": modules((TRANSFORMER_V5, ""), (POOLING_V5, "1_Pooling"), (NORMALIZE_V5, "2_Normalize")),
        "pooling": pooling("weightedmean"),
    },
    {
        "name": "cls-and-mean-concatenated",
        "modules": modules((TRANSFORMER_V5, ""), (POOLING_V5, "1_Pooling"), (NORMALIZE_V5, "2_Normalize")),
        "pooling": pooling(["mean", "cls"]),
    },
    {
        "name": "mean-dense-tanh",
        "modules": modules(
            (TRANSFORMER, ""), (POOLING, "1_Pooling"), (DENSE, "2_Dense"), (NORMALIZE, "3_Normalize")
        ),
        "pooling": legacy_pooling("mean"),
        "dense": {"2_Dense": dense(384, 128, "torch.nn.modules.activation.Tanh", seed=7)},
    },
    {
        "name": "cls-two-dense-layers",
        "modules": modules(
            (TRANSFORMER_V5, ""),
            (POOLING_V5, "1_Pooling"),
            (DENSE_V5, "2_Dense"),
            (DENSE_V5, "3_Dense"),
            (NORMALIZE_V5, "4_Normalize"),
        ),
        "pooling": pooling("cls"),
        "dense": {
            "2_Dense": dense(384, 64, "torch.nn.modules.activation.GELU", bias=False, seed=11),
            "3_Dense": dense(64, 32, "torch.nn.modules.linear.Identity", seed=13),
        },
    },
    {
        "name": "prompts",
        "modules": modules((TRANSFORMER, ""), (POOLING, "1_Pooling"), (NORMALIZE, "2_Normalize")),
        "pooling": legacy_pooling("mean"),
        "prompts": {"query": "query: ", "passage": "passage: "},
        "prompt_names": {"query": "query", "document": "passage"},
    },
    {
        "name": "prompt-excluded-from-pooling",
        "modules": modules((TRANSFORMER_V5, ""), (POOLING_V5, "1_Pooling"), (NORMALIZE_V5, "2_Normalize")),
        "pooling": pooling("mean", include_prompt=False),
        "prompts": {
            "query": "Represent this sentence for searching relevant passages: ",
            "document": "Represent this passage for retrieval: ",
        },
        "prompt_names": {"query": "query", "document": "document"},
    },
    {
        "name": "default-prompt-and-subfolder",
        "modules": modules((TRANSFORMER, ""), (POOLING, "1_Pooling"), transformer_path="0_Transformer"),
        "transformer_path": "0_Transformer",
        "pooling": legacy_pooling("cls", "mean"),
        "prompts": {"query": "search_query: ", "classification": "classification: "},
        "default_prompt_name": "classification",
        "prompt_names": {"query": "query", "plain": "classification", "document": "classification"},
    },
    {
        # a default prompt, left out of pooling, on a lowercasing folder with an uncased-looking
        # prompt: the counted prompt length must be the prompt's own
        "name": "default-prompt-excluded-lowercased",
        "modules": modules((TRANSFORMER, ""), (POOLING, "1_Pooling"), (NORMALIZE, "2_Normalize")),
        "pooling": legacy_pooling("mean", include_prompt=False),
        "sbert": {"max_seq_length": 256, "do_lower_case": True},
        "prompts": {"query": "Find The PASSAGE for: ", "clustering": "Identify The Topic: "},
        "default_prompt_name": "clustering",
        "prompt_names": {"query": "query", "plain": "clustering", "document": "clustering"},
    },
]

BASE_FILES = ["config.json", "tokenizer.json", "vocab.txt", "model.safetensors"]


def small_files(variant):
    """The folder's small files, as text, by path (what the fixture carries verbatim)."""
    files = {"modules.json": json.dumps(variant["modules"], indent=2)}
    tp = variant.get("transformer_path", "")
    files[os.path.join(tp, "sentence_bert_config.json") if tp else "sentence_bert_config.json"] = json.dumps(
        variant.get("sbert", SBERT)
    )
    files["1_Pooling/config.json"] = json.dumps(variant["pooling"], indent=2)
    for path, d in variant.get("dense", {}).items():
        files[f"{path}/config.json"] = json.dumps(d["config"], indent=2)
    if "prompts" in variant:
        files["config_sentence_transformers.json"] = json.dumps(
            {
                "prompts": variant["prompts"],
                "default_prompt_name": variant.get("default_prompt_name"),
                "similarity_fn_name": "cosine",
            },
            indent=2,
        )
    return files


def build(base, out, variant):
    tp = variant.get("transformer_path", "")
    tdir = os.path.join(out, tp)
    os.makedirs(tdir, exist_ok=True)
    for f in BASE_FILES:
        os.symlink(os.path.join(base, f), os.path.join(tdir, f))
    for path, text in small_files(variant).items():
        os.makedirs(os.path.dirname(os.path.join(out, path)), exist_ok=True)
        with open(os.path.join(out, path), "w", encoding="utf-8") as f:
            f.write(text)
    for path, d in variant.get("dense", {}).items():
        c = d["config"]
        tensors = {"linear.weight": seeded(d["seed"], (c["out_features"], c["in_features"]), d["scale"])}
        if c["bias"]:
            tensors["linear.bias"] = seeded(d["seed"] + 1, (c["out_features"],), d["scale"])
        save_file(tensors, os.path.join(out, path, "model.safetensors"))


def main() -> None:
    base, out = os.path.abspath(sys.argv[1]), sys.argv[2]
    result = {
        "base_model": "all-MiniLM-L6-v2",
        "made_by": "scripts/make-sentence-models-reference.sh (sentence-transformers, CPU)",
        "base_files": BASE_FILES,
        "texts": TEXTS,
        "variants": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            folder = os.path.join(tmp, variant["name"])
            build(base, folder, variant)
            model = SentenceTransformer(folder, device="cpu")
            vectors = {}
            names = variant.get("prompt_names", {})
            for kind in ["query", "document", "plain"]:
                if kind == "plain" or kind in names:
                    if kind == "plain":
                        v = model.encode(TEXTS, batch_size=4, convert_to_numpy=True)
                    else:
                        v = model.encode(TEXTS, prompt_name=names[kind], batch_size=4, convert_to_numpy=True)
                    vectors[kind] = [[round(float(x), 7) for x in row] for row in v]
            result["variants"].append(
                {
                    "name": variant["name"],
                    "transformer_path": variant.get("transformer_path", ""),
                    "files": small_files(variant),
                    "dense": {
                        path: {"seed": d["seed"], "scale": d["scale"], **d["config"]}
                        for path, d in variant.get("dense", {}).items()
                    },
                    "vectors": vectors,
                }
            )
            print(f"{variant['name']}: dimension {len(vectors['plain'][0])}, kinds {sorted(vectors)}")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
