"""Write docs/benchmarks/embedding.md from the two halves of the embedding benchmark."""
import json
import platform
import sys

py, shoal, inputs, out = sys.argv[1:5]
bf16 = json.load(open(sys.argv[5])) if len(sys.argv) > 5 else None
py = json.load(open(py))
sh = json.load(open(shoal))
inp = json.load(open(inputs))
cpu = ""
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except Exception:
    pass
engines = dict(py["engines"])
engines[f"shoal ({sh['engine']}, f32, {sh['kernels']} kernels)"] = sh
if bf16:
    engines[f"shoal ({bf16['engine']}, bf16 opt-in, {bf16['kernels']} kernels)"] = bf16
best = {k: max(py["engines"][e][k] for e in py["engines"]) for k in ["passages", "queries", "mixed"]}
lines = [
    "# Embedding benchmark: shoal vs sentence-transformers vs ONNX Runtime",
    "",
    f"Written by `scripts/bench-embed.sh`. Machine: {cpu} (the instruction set shoal's kernels "
    f"use here: {sh['kernels']}); {py['threads']} threads for every engine "
    "(torch.set_num_threads, ORT intra_op_num_threads, a rayon pool for shoal). Batches of 32, "
    f"sorted by length for every engine (shoal packs a batch without padding: at most 32 texts and "
    f"{sh['max_batch_tokens']:,} tokens, `model.max_batch_tokens`), max 256 tokens, mean pooling + L2. ONNX export of the same "
    f"weights (min cosine to sentence-transformers on 16 queries: {py['onnx_min_cosine_to_st']:.6f}).",
    "",
    f"Inputs (Wikipedia lead summaries): {len(inp['passages'])} passages of {inp['passage_tokens']:.0f} tokens on average, "
    f"{len(inp['queries'])} short queries ({inp['query_tokens']:.1f} tokens), {len(inp['mixed'])} mixed texts ({inp['mixed_tokens']:.0f} tokens).",
    "",
    "| engine | passages/s | short texts/s | mixed texts/s | batch-1 query p50 | p95 |",
    "|---|---|---|---|---|---|",
]
for name, r in engines.items():
    lat = r["query_latency"]
    lines.append(f"| {name} | {r['passages']:.1f} | {r['queries']:.1f} | {r['mixed']:.1f} | {lat['p50_ms']:.2f} ms | {lat['p95_ms']:.2f} ms |")
st = py["engines"]["sentence-transformers"]
lines += [
    "",
    "shoal f32 relative to the faster of the two others: "
    + ", ".join(f"{k} {sh[k] / best[k]:.2f}x" for k in ["passages", "queries", "mixed"]) + ".",
]
if bf16:
    acc = bf16["accuracy"]
    lines += [
        "",
        "shoal bf16 relative to sentence-transformers: "
        + ", ".join(f"{k} {bf16[k] / st[k]:.2f}x" for k in ["passages", "queries", "mixed"]) + ".",
        f"bf16 accuracy against shoal f32 on the same inputs: cosine per text min {acc['min_cosine']:.5f}, "
        f"mean {acc['mean_cosine']:.6f} ({acc['corpus'] + acc['queries']:,} texts); top-10 overlap of an exact "
        f"search of the {acc['queries']:,} queries over the {acc['corpus']:,} passages and mixed texts: {acc['top10_overlap']:.4f}.",
    ]
lines.append("")
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
