"""Issue 14 part 1 — full-resolution edges: stock SAM vs clipsam (full resolution, the default) vs clipsam's old
path (``full_resolution=False``: processing-size masks scaled up nearest neighbour), same weights, same photo.

    python benchmarks/fullres.py                       # vit_b, 2048 px and 12 MP, prompts and segment_everything
    python benchmarks/fullres.py --sizes 2048 --tasks prompt

Each (size, task, path) runs in a fresh process, image encoding included, so peak memory is its own. ``prompt``: 12
prompts (single clicks, click pairs, boxes) through ``SamPredictor.predict`` / ``Segmenter.segment_prompt``;
``everything``: ``SamAutomaticMaskGenerator.generate`` / ``Segmenter.segment_everything(label=False)`` with every
mask kept (random weights otherwise lose them all; clipsam's ``duplicate_iou=1.0`` merges exact duplicates only).
Prints, per run: masks RLE-identical to stock's (as sets), the old path's mean IoU with stock's masks, time and peak
memory of each path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = [
    {"points": [[0.31, 0.42]]}, {"points": [[0.62, 0.55]]}, {"points": [[0.15, 0.8]]}, {"points": [[0.8, 0.2]]},
    {"points": [[0.4, 0.5], [0.7, 0.5]], "labels": [1, 0]}, {"points": [[0.5, 0.3], [0.52, 0.35]], "labels": [1, 1]},
    {"box": [0.2, 0.2, 0.6, 0.7]}, {"box": [0.05, 0.5, 0.35, 0.95]}, {"box": [0.5, 0.1, 0.95, 0.6]},
    {"box": [0.3, 0.3, 0.5, 0.5]}, {"points": [[0.45, 0.45]], "box": [0.2, 0.2, 0.7, 0.7]},
    {"points": [[0.7, 0.7]], "box": [0.55, 0.5, 0.9, 0.9]},
]


def _scaled(prompt: dict, w: int, h: int) -> dict:
    out = dict(prompt)
    if "points" in prompt:
        out["points"] = [[x * w, y * h] for x, y in prompt["points"]]
    if "box" in prompt:
        x0, y0, x1, y1 = prompt["box"]
        out["box"] = [x0 * w, y0 * h, x1 * w, y1 * h]
    return out


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from _common import Timer, peak_rss_mb, photo, sam_model

    from clipsam.core import masks as M

    torch.set_num_threads(args.threads)
    image = photo(long_side=int(args.size)) if args.size != "12mp" else photo(pixels=12_000_000)
    h, w = image.shape[:2]
    model, kind = sam_model(args.sam)
    model = model.to(args.device)
    params = {"points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
              "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    rles: list = []
    stages = None
    with torch.inference_mode(), Timer() as t:
        if args.path == "stock":
            from segment_anything import SamAutomaticMaskGenerator, SamPredictor

            if args.task == "everything":
                out = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params).generate(image)
                rles = [r["segmentation"] for r in out]
            else:
                pred = SamPredictor(model)
                pred.set_image(image)
                for p in map(lambda p: _scaled(p, w, h), PROMPTS):
                    pts = np.asarray(p["points"]) if "points" in p else None
                    lbl = np.asarray(p.get("labels", [1] * len(pts))) if pts is not None else None
                    multi = pts is not None and len(pts) == 1 and "box" not in p
                    masks, iou, _ = pred.predict(point_coords=pts, point_labels=lbl, box=np.asarray(p["box"])
                                                 if "box" in p else None, multimask_output=multi)
                    rles += [M.encode(masks[k]) for k in np.argsort(-iou, kind="stable")]
        else:
            from clipsam import Segmenter

            seg = Segmenter.from_models(model, device=args.device, max_side=1024, duplicate_iou=1.0,
                                        full_resolution=args.path == "clipsam")
            if args.task == "everything":
                rles = [r.rle for r in seg.segment_everything(image, label=False, **params)]
                stages = seg.last_stats.get("seconds")
            else:
                for p in map(lambda p: _scaled(p, w, h), PROMPTS):
                    rles += [r.rle for r in seg.segment_prompt(image, **p)]
    counts = sorted(str(r["counts"]) for r in rles)
    Path(args.out).write_text(json.dumps([{"size": list(r["size"]), "counts": str(r["counts"])} for r in rles]))
    print(json.dumps({"seconds": t.seconds, "peak_mb": peak_rss_mb(), "masks": len(rles), "weights": kind,
                      "stages": stages,
                      "digest": hashlib.sha256("\n".join(counts).encode()).hexdigest(), "image": [h, w]}))


def _mean_best_iou(ours: list, stock: list) -> float:
    """Mean over *stock*'s masks of the best IoU with any of *ours* (1.0: every stock mask is there)."""
    from _common import best_ious

    return float(best_ious(stock, ours).mean()) if ours and stock else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam", default="vit_b")
    ap.add_argument("--sizes", default="2048,12mp")
    ap.add_argument("--tasks", default="prompt,everything")
    ap.add_argument("--points-per-side", type=int, default=8)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", choices=["stock", "clipsam", "nearest"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", default="2048", help=argparse.SUPPRESS)
    ap.add_argument("--task", default="prompt", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.path = args.worker
        return worker(args)

    import tempfile

    from _common import machine

    results = {"machine": machine(), "sam": args.sam, "device": args.device, "date": time.strftime("%Y-%m-%d"),
               "command": " ".join(sys.argv), "points_per_side": args.points_per_side, "runs": []}
    tmp = Path(tempfile.mkdtemp(prefix="clipsam-fullres-"))
    for size in args.sizes.split(","):
        for task in args.tasks.split(","):
            runs, masks = {}, {}
            for path in ("stock", "clipsam", "nearest"):
                out = tmp / f"{size}-{task}-{path}.json"
                cmd = [sys.executable, __file__, "--worker", path, "--size", size, "--task", task, "--sam", args.sam,
                       "--points-per-side", str(args.points_per_side), "--points-per-batch",
                       str(args.points_per_batch), "--threads", str(args.threads), "--device", args.device,
                       "--out", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{path} {task} at {size} failed:\n{proc.stderr[-3000:]}")
                runs[path] = json.loads(proc.stdout.strip().splitlines()[-1])
                masks[path] = json.loads(out.read_text())
            s, c, n = runs["stock"], runs["clipsam"], runs["nearest"]
            row = {"size": size, "task": task, "image_hw": s["image"], "weights": s["weights"],
                   "stock_masks": s["masks"], "clipsam_masks": c["masks"],
                   "identical": s["digest"] == c["digest"],
                   "nearest_mean_iou_with_stock": round(_mean_best_iou(masks["nearest"], masks["stock"]), 4),
                   "clipsam_mean_iou_with_stock": round(_mean_best_iou(masks["clipsam"], masks["stock"]), 4),
                   **{f"{p}_s": round(runs[p]["seconds"], 2) for p in runs},
                   **{f"{p}_peak_mb": round(runs[p]["peak_mb"]) for p in runs},
                   "clipsam_vs_stock_speed": round(s["seconds"] / c["seconds"], 2),
                   "clipsam_vs_nearest_time": round(c["seconds"] / n["seconds"], 2),
                   "clipsam_vs_stock_peak": round(c["peak_mb"] / s["peak_mb"], 3),
                   "clipsam_stages_s": c["stages"],
                   "nest_share": round(c["stages"]["nest"] / c["seconds"], 4) if c["stages"] else None}
            results["runs"].append(row)
            print(f"{size:>5} {task:<10} {row['image_hw']}: {c['masks']} masks, identical to stock={row['identical']}"
                  f" (mean IoU {row['clipsam_mean_iou_with_stock']}; old nearest path "
                  f"{row['nearest_mean_iou_with_stock']}); stock {row['stock_s']} s / clipsam {row['clipsam_s']} s / "
                  f"old {row['nearest_s']} s; peak {row['stock_peak_mb']} / {row['clipsam_peak_mb']} / "
                  f"{row['nearest_peak_mb']} MB" + (f"; nest {row['nest_share']:.1%} of clipsam's time"
                                                    if row["nest_share"] is not None else ""), flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
