"""Benchmark 9 — region-index writes: one append per image (the old ``index``) vs clipsam's batched writes with
compaction vs one bulk write, then the same top-10 searches on each table, same run.

    python benchmarks/index_writes.py                       # 3,000 images x 10 regions, 512-d
    python benchmarks/index_writes.py --images 20000        # more

Rows are written exactly as ``clipsam index`` writes them (``RegionIndex._write_images``: leftovers deleted, the
image's rows appended, the image marked done), with synthetic unit vectors instead of CLIP's. "per image" calls it
once per image and never compacts (what ``index`` did); "batched" is today's ``RegionIndex.add`` path (64 images per
append, compaction every 16 appends and at the end); "bulk" writes every row in one ``create_table``. Search: the
same 50 queries, exact (flat) top-10 like a table below the ANN threshold, p50 over 5 rounds.
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


def image_rows(k: int, regions: int, dim: int, rng: np.random.Generator) -> tuple[str, str, list[dict]]:
    digest = f"{k:064x}"
    vecs = rng.standard_normal((regions, dim)).astype(np.float32)
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
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import lancedb
    import pyarrow as pa

    rng = np.random.default_rng(0)
    batch = [image_rows(k, args.regions, args.dim, rng) for k in range(args.images)]
    queries = rng.standard_normal((50, args.dim)).astype(np.float32)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        per_image = S.RegionIndex(f"{tmp}/per_image")
        with Timer() as t:
            for item in batch:
                per_image._write_images([item], args.dim)
        out["per image"] = {"write_s": t.seconds, "search_p50_ms": search_p50(f"{tmp}/per_image", queries)}

        batched = S.RegionIndex(f"{tmp}/batched")
        with Timer() as t:
            for k in range(0, len(batch), S.FLUSH_IMAGES):
                batched._write_images(batch[k: k + S.FLUSH_IMAGES], args.dim)
                if (k // S.FLUSH_IMAGES + 1) % S.COMPACT_EVERY == 0:
                    batched.compact(0)
            batched.compact(0)
        out["batched"] = {"write_s": t.seconds, "search_p50_ms": search_p50(f"{tmp}/batched", queries)}

        with Timer() as t:
            rows = [r for _, _, image in batch for r in image]
            lancedb.connect(f"{tmp}/bulk").create_table("regions", pa.Table.from_pylist(rows, schema=S._schema(
                args.dim)))
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
