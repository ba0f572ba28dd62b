"""Benchmark 8 — the nest stage at scale: tiled exact intersections vs pycocotools' pairwise IoU, same masks, same run.

    python benchmarks/nest_scale.py                    # 200 and 1,000 masks, noisy and smooth, 1024x768
    python benchmarks/nest_scale.py --grid-like 768,3072 # SAM's grid: each region many times; all pairs vs kept

Nesting needs every pair's intersection twice (near-duplicates by IoU, then the containment tree). The old path
asked pycocotools twice (``iou`` over all masks, then intersections over the kept ones): its cost grows with
pairs x runs per mask, which explodes for random-weight SAM masks (noise, thousands of runs each). The new path
(:func:`clipsam.masks.pairwise_intersections`) computes the intersections once, tile by tile, as float32 matrix
products of the masks' bit-packed boxes, and both steps share them. Results are checked identical (same kept
masks, same parents) before timing is reported.

``--grid-like``: what SAM's point grid returns -- every region many times (3,072 masks at 32x32 points, a few hundred
regions): the all-pairs stage (every pair's intersection, then duplicates and tree) against today's, which compares
each mask with the masks already kept (:func:`clipsam.core.tree.dedupe_kept`); kept masks and parents checked
identical.

Mask sets: **noisy** — random blobs thresholded from smoothed noise at several scales, like random-weight SAM
masks (many runs); **smooth** — ellipses and boxes of assorted sizes that nest, like real SAM masks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, machine, peak_rss_mb  # noqa: E402

from clipsam.core import masks as M  # noqa: E402
from clipsam.core import tree as T  # noqa: E402
from clipsam.stages.nest import nest  # noqa: E402


def noisy_masks(n: int, h: int, w: int, seed: int = 0) -> list[M.RLE]:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = ndimage.gaussian_filter(rng.standard_normal((h // 4, w // 4)), sigma=rng.uniform(0.6, 3.0))
        m = np.kron(field > rng.uniform(0.2, 1.2) * field.std(), np.ones((4, 4), bool))[:h, :w]
        m = m ^ (rng.random((h, w)) < 0.02)  # speckle: random-weight masks are ragged at the pixel level
        out.append(M.encode(m))
    return out


def smooth_masks(n: int, h: int, w: int, seed: int = 0) -> list[M.RLE]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        ry, rx = rng.uniform(0.01, 0.3) * h, rng.uniform(0.01, 0.3) * w
        cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
        if rng.random() < 0.5:
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        out.append(M.encode(m))
    return out


def old_nest(rles: list[M.RLE], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The previous nest stage: pycocotools' IoU for the duplicates, its intersections again for the tree."""
    n = len(rles)
    rank = np.empty(n, dtype=np.int64)
    rank[T.canonical_order(rles)] = np.arange(n)
    order = sorted(range(n), key=lambda i: (-quality[i], rank[i]))
    iou = M.iou_matrix(rles, rles)
    areas = np.asarray(M.area(rles))
    kept: list[int] = []
    for i in order:
        if areas[i] and not (kept and iou[i, kept].max() >= T.DEFAULT_DUPLICATE_IOU):
            kept.append(i)
    keep = np.asarray(sorted(kept), dtype=np.int64)
    rows = keep[T.canonical_order([rles[i] for i in keep])]
    ordered = [rles[i] for i in rows]
    inter = M.intersection_matrix(ordered, ordered).astype(np.float64)
    a = np.asarray(M.area(ordered), dtype=np.float64)
    share = np.where(a[:, None] > 0, inter / np.maximum(a[:, None], 1.0), 0.0)
    r = np.arange(len(rows))
    cand = (share >= T.DEFAULT_CONTAINMENT) & (r[None, :] < r[:, None])
    parent = np.where(cand.any(1), np.where(cand, r[None, :], -1).argmax(1), -1)
    return rows, parent


def grid_like(n: int, h: int, w: int, distinct: int, seed: int = 0) -> list[M.RLE]:
    """*n* masks of *distinct* noisy regions, each returned many times less 1 % of its pixels, at random (IoU ~0.98 with
    one another), shuffled: SAM's grid, whose neighbouring points and three granularities repeat a region."""
    from clipsam.core.masks import decode

    rng = np.random.default_rng(seed)
    base = [decode(r) for r in noisy_masks(distinct, h, w, seed)]
    out = [M.encode(base[k] & (rng.random((h, w)) >= 0.01)) for k in rng.integers(0, distinct, n)]
    return out


def all_pairs_nest(rles: list[M.RLE], quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stage before :func:`~clipsam.core.tree.dedupe_kept`: every pair's intersection, once, for both steps."""
    inter = M.pairwise_intersections(rles)
    keep = T.dedupe(rles, quality, T.DEFAULT_DUPLICATE_IOU, inter=inter)
    rows = keep[T.canonical_order([rles[i] for i in keep])]
    return rows, T.build_parents([rles[i] for i in rows], T.DEFAULT_CONTAINMENT, inter=inter[np.ix_(rows, rows)])


def compare_grid_like(counts: list[int], h: int, w: int) -> list[dict]:
    print("| masks | distinct regions | kept | all pairs (s) | against the kept (s) | speed-up | identical |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    out = []
    for n in counts:
        distinct = max(1, round(n * 219 / 3072))  # the ratio measured on ViT-B's 32x32 grid (benchmarks/onnx_cpu.py)
        rles = grid_like(n, h, w, distinct)
        quality = np.random.default_rng(1).random(n)
        with Timer() as t_new:
            regions = nest(rles, quality, np.ones(n))
        with Timer() as t_old:
            rows, parent = all_pairs_nest(rles, quality)
        same = np.array_equal(regions.ids, rows) and np.array_equal(regions.parent, parent)
        print(f"| {n} | {distinct} | {len(rows)} | {t_old.seconds:.2f} | {t_new.seconds:.2f} | "
              f"{t_old.seconds / t_new.seconds:.1f}x | {'yes' if same else 'NO'} |", flush=True)
        out.append({"masks": n, "distinct": distinct, "kept": len(rows), "all_pairs_s": t_old.seconds,
                    "kept_s": t_new.seconds, "identical": bool(same)})
        if not same:
            raise SystemExit("comparing against the kept masks changed the result")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="200,1000")
    ap.add_argument("--size", default="768x1024", help="HxW of the processing size")
    ap.add_argument("--old-max-noisy", type=int, default=300, help="skip the old path for more noisy masks than this "
                    "(it grows with pairs x runs: ~25 min at 1,000 here)")
    ap.add_argument("--grid-like", default=None, help="comma-separated mask counts: SAM-grid-like sets instead")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    if args.grid_like:
        print(f"# nest stage on SAM-grid-like masks, {machine()}; masks {h}x{w}")
        rows = compare_grid_like([int(c) for c in args.grid_like.split(",")], h, w)
        print(f"peak resident memory {peak_rss_mb():.0f} MB")
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "grid_like": rows}, indent=2))
        return
    print(f"# nest stage, {machine()}; masks {h}x{w}")
    print("| masks | kind | RLE chars/mask | old (s) | new (s) | speed-up | identical |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- |")
    rows_out = []
    for n in (int(c) for c in args.counts.split(",")):
        for kind, make in (("noisy", noisy_masks), ("smooth", smooth_masks)):
            rles = make(n, h, w)
            chars = float(np.mean([len(r["counts"]) for r in rles]))  # RLE string length: grows with the runs
            quality = np.random.default_rng(1).random(n)
            with Timer() as t_new:
                regions = nest(rles, quality, np.ones(n))
            if kind == "noisy" and n > args.old_max_noisy:
                print(f"| {n} | {kind} | {chars:,.0f} | (not run) | {t_new.seconds:.2f} | | |", flush=True)
                rows_out.append({"masks": n, "kind": kind, "old_s": None, "new_s": t_new.seconds})
                continue
            with Timer() as t_old:
                old_rows, old_parent = old_nest(rles, quality)
            same = np.array_equal(regions.ids, old_rows) and np.array_equal(regions.parent, old_parent)
            print(f"| {n} | {kind} | {chars:,.0f} | {t_old.seconds:.2f} | {t_new.seconds:.2f} | "
                  f"{t_old.seconds / t_new.seconds:.1f}x | {'yes' if same else 'NO'} |", flush=True)
            rows_out.append({"masks": n, "kind": kind, "old_s": t_old.seconds, "new_s": t_new.seconds,
                             "identical": bool(same)})
            if not same:
                raise SystemExit("the new nest stage differs from the old one")
    print(f"peak resident memory {peak_rss_mb():.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows_out}, indent=2))


if __name__ == "__main__":
    main()
