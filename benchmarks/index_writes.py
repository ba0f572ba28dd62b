"""Benchmark 9 — region-index writes: one append per image (the old ``index``) vs clipsam's batched writes with
compaction vs one bulk write, then the same top-10 searches on each table, same run.

    python benchmarks/index_writes.py                       # 3,000 images x 10 regions, 512-d
    python benchmarks/index_writes.py --images 100000 --skip-per-image   # collection scale (1 M rows)

Rows are written exactly as ``clipsam index`` writes them (``RegionIndex._write_images``: leftovers deleted, the
image's rows appended, the image marked done), with synthetic unit vectors instead of CLIP's. "per image" calls it
once per image and never compacts (what ``index`` did); "batched" is today's ``RegionIndex.add`` path (64 images per
append, compaction after 16, 32, 64, 128, 256 appends, then every 256, and at the end); "bulk" writes every row in
one ``create_table``. Search: the same 50 queries, exact (flat) top-10 like a table below the ANN threshold, p50 over
5 rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, machine  # noqa: E402

from clipsam import search as S  # noqa: E402


def image_rows(k: int, regions: int, dim: int) -> tuple[str, str, list[dict]]:
    """Image *k*'s rows, the same every time they are made (generated as they are written: 1 M rows of Python
    lists would not fit in memory)."""
    digest = f"{k:064x}"
    vecs = np.random.default_rng(k).standard_normal((regions, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = [{"vector": vecs[i].tolist(), "image_path": f"/photos/{k}.jpg", "image_hash": digest, "region_id": i,
             "parent_id": -1, "bbox": [0.0, 0.0, 10.0, 10.0], "height": 480, "width": 640, "rle_counts": "PPP",
             "area": 100, "label": "cat", "label_path": "/animal/cat/", "score": 0.9, "kind": "object"}
            for i in range(regions)]
    return f"/photos/{k}.jpg", digest, rows


def search_p50(path: str, queries: np.ndarray) -> float:
    import lancedb

    table = lancedb.connect(path).open_table("regions")
    times = []
    for _ in range(5):
        for q in queries:
            t0 = time.perf_counter()
            table.search(q).distance_type("cosine").limit(10).to_list()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--regions", type=int, default=10)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--skip-per-image", action="store_true", help="skip the old one-append-per-image path (it takes "
                    "hours past a few thousand images)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import lancedb
    import pyarrow as pa

    queries = np.random.default_rng(2**40).standard_normal((50, args.dim)).astype(np.float32)
    n, per = args.images, args.regions
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_per_image:
            per_image = S.RegionIndex(f"{tmp}/per_image")
            with Timer() as t:
                for k in range(n):
                    per_image._write_images([image_rows(k, per, args.dim)], args.dim)
            out["per image"] = {"write_s": t.seconds, "search_p50_ms": search_p50(f"{tmp}/per_image", queries)}

        batched = S.RegionIndex(f"{tmp}/batched")
        with Timer() as t:
            for k in range(0, n, S.FLUSH_IMAGES):
                batch = [image_rows(j, per, args.dim) for j in range(k, min(n, k + S.FLUSH_IMAGES))]
                batched._write_images(batch, args.dim)
                if S.compaction_due(k // S.FLUSH_IMAGES + 1):
                    batched.compact(0)
            batched.compact(0)
        out["batched"] = {"write_s": t.seconds, "search_p50_ms": search_p50(f"{tmp}/batched", queries)}

        schema = S._schema(args.dim)

        def chunks():  # one create_table over every row, streamed
            for k in range(0, n, 1000):
                rows = [r for j in range(k, min(n, k + 1000)) for r in image_rows(j, per, args.dim)[2]]
                yield from pa.Table.from_pylist(rows, schema=schema).to_batches()

        with Timer() as t:
            lancedb.connect(f"{tmp}/bulk").create_table("regions", pa.RecordBatchReader.from_batches(schema,
                                                                                                    chunks()))
        out["bulk"] = {"write_s": t.seconds, "search_p50_ms": search_p50(f"{tmp}/bulk", queries)}

    bulk = out["bulk"]["search_p50_ms"]
    print(f"# index writes, {args.images:,} images x {args.regions} regions ({args.images * args.regions:,} rows, "
          f"{args.dim}-d) — {machine()}")
    print("| writes | write time | top-10 search p50 | vs bulk |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in out.items():
        print(f"| {name} | {r['write_s']:.1f} s | {r['search_p50_ms']:.1f} ms | {r['search_p50_ms'] / bulk:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "images": args.images, **out}, indent=2))


if __name__ == "__main__":
    main()
