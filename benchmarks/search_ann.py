"""Region-search ANN benchmark: a LanceDB table of synthetic clustered unit vectors, IVF-PQ index vs exact search.

    python benchmarks/search_ann.py                       # 1,000,000 x 512, the issue's setting
    python benchmarks/search_ann.py --rows 100000         # quicker

Prints build time, top-10 query latency p50/p95 with the index and with exact (brute-force) search in the same
run, their ratio, and recall@10 of the index against exact search. The index is built exactly as clipsam's
``RegionIndex`` builds it (:func:`clipsam.search.build_ann_index`), and queried with its default search settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np


def cluster_centres(clusters: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def clustered_unit_vectors(n: int, centers: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """*n* unit vectors, each a random centre plus Gaussian noise of norm about *spread*."""
    clusters, dim = centers.shape
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        noise = rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        v = centers[rng.integers(0, clusters, m)] + spread * noise
        out[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the cluster centre")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--exact-queries", type=int, default=20, help="exact-search queries timed (slow)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", type=str, default=None, help="also write results to this file")
    args = ap.parse_args()

    import lancedb
    import pyarrow as pa

    from clipsam.search import ANN_SEARCH, build_ann_index

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    centers = cluster_centres(args.clusters, args.dim, rng)
    data = clustered_unit_vectors(args.rows, centers, args.spread, rng)
    queries = clustered_unit_vectors(args.queries, centers, args.spread, rng)  # new points, same clusters
    gen_s = time.perf_counter() - t0

    folder = tempfile.mkdtemp(prefix="clipsam-ann-")
    try:
        db = lancedb.connect(folder)
        t0 = time.perf_counter()
        vec = pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), args.dim)
        table = db.create_table("regions", pa.table({"id": pa.array(np.arange(args.rows)), "vector": vec}))
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_ann_index(table, args.rows, args.dim)
        index_s = time.perf_counter() - t0

        # exact top-k by brute force in numpy (the ground truth)
        truth = []
        for qv in queries:
            sims = data @ qv
            top = np.argpartition(-sims, args.k)[: args.k]
            truth.append(set(top[np.argsort(-sims[top])].tolist()))

        def ann(qv: np.ndarray) -> list[int]:
            query = table.search(qv).distance_type("cosine").nprobes(ANN_SEARCH["nprobes"]).refine_factor(
                ANN_SEARCH["refine_factor"]).limit(args.k).select(["id", "_distance"])
            return [r["id"] for r in query.to_list()]

        def exact(qv: np.ndarray) -> list[int]:
            query = table.search(qv).distance_type("cosine").bypass_vector_index().limit(args.k)
            query = query.select(["id", "_distance"])
            return [r["id"] for r in query.to_list()]

        for qv in queries[:5]:
            ann(qv)  # warm the index cache
        lat, recall = [], []
        for qv, gt in zip(queries, truth, strict=True):
            t = time.perf_counter()
            got = ann(qv)
            lat.append(time.perf_counter() - t)
            recall.append(len(gt & set(got)) / args.k)
        exact_lat, exact_recall = [], []
        for qv, gt in zip(queries[: args.exact_queries], truth, strict=False):
            t = time.perf_counter()
            got = exact(qv)
            exact_lat.append(time.perf_counter() - t)
            exact_recall.append(len(gt & set(got)) / args.k)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    p50, p95 = (float(np.percentile(lat, p)) * 1e3 for p in (50, 95))
    e50 = float(np.percentile(exact_lat, 50)) * 1e3
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": args.rows, "dim": args.dim,
        "clusters": args.clusters, "queries": args.queries, "generate_s": round(gen_s, 1), "write_s": round(write_s, 1),
        "index_build_s": round(index_s, 1), "ann_p50_ms": round(p50, 2), "ann_p95_ms": round(p95, 2),
        "exact_p50_ms": round(e50, 1), "speedup_p50": round(e50 / p50, 1),
        "recall_at_10": round(float(np.mean(recall)), 4),
        "exact_recall_at_10": round(float(np.mean(exact_recall)), 4), "search_settings": ANN_SEARCH,
    }
    print(json.dumps(result, indent=2))
    print(f"\nANN top-{args.k}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, recall@{args.k} {result['recall_at_10']:.3f}; "
          f"exact p50 {e50:.0f} ms -> index is {e50 / p50:.1f}x faster; build {index_s:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
