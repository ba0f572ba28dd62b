"""Benchmark 1 — candidates: stock SamAutomaticMaskGenerator vs clipsam's generator, same weights, same image.

    python benchmarks/candidates.py                              # vit_b, long side 1024 and 12 MP
    python benchmarks/candidates.py --sizes 1024 --points-per-side 32

Each run happens in a fresh process (so that peak memory is its own), image encoding included. Without cached
weights, SAM has random weights; the parameters then keep every mask (pred_iou_thresh=0,
stability_score_thresh=0, box_nms_thresh=1.0) so that post-processing carries the load it has with real weights.
Prints, per size: masks identical (RLE-equal, same order), time ratio, peak-memory ratio (whole process, and
above the memory held before generating).
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


def worker(args: argparse.Namespace) -> None:
    import torch
    from _common import Timer, peak_rss_mb, photo, rss_mb, sam_model

    torch.set_num_threads(args.threads)
    image = photo(long_side=1024) if args.size == "1024" else photo(pixels=12_000_000)
    model, kind = sam_model(args.sam)
    model = model.to(args.device)
    cuda = args.device.startswith("cuda")
    params = {"points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
              "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    base = rss_mb()
    with torch.inference_mode(), Timer() as t:
        if args.path == "stock":
            from segment_anything import SamAutomaticMaskGenerator

            out = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params).generate(image)
            counts = [r["segmentation"]["counts"] for r in out]
        else:
            from clipsam.models.sam import SamProposer

            out = SamProposer(model, args.device, precision=args.precision).generate(image, **params)
            counts = [p.rle["counts"] for p in out]
        if cuda:
            torch.cuda.synchronize()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    print(json.dumps({"seconds": t.seconds, "peak_mb": peak_rss_mb(), "base_mb": base, "masks": len(counts),
                      "gpu_peak_mb": gpu_peak,
                      "digest": hashlib.sha256("\n".join(counts).encode()).hexdigest(), "weights": kind,
                      "image": list(image.shape[:2])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam", default="vit_b")
    ap.add_argument("--sizes", default="1024,12mp")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--points-per-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="fp32", help="clipsam's path: fp32 or bf16 (CUDA)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", choices=["stock", "fast"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", default="1024", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.path = args.worker
        return worker(args)

    from _common import machine

    results = {"machine": machine(), "sam": args.sam, "date": time.strftime("%Y-%m-%d"),
               "command": " ".join(sys.argv), "points_per_side": args.points_per_side,
               "points_per_batch": args.points_per_batch, "runs": []}
    for size in args.sizes.split(","):
        runs = {}
        for path in ("stock", "fast"):
            cmd = [sys.executable, __file__, "--worker", path, "--size", size, "--sam", args.sam,
                   "--points-per-side", str(args.points_per_side), "--points-per-batch", str(args.points_per_batch),
                   "--threads", str(args.threads), "--device", args.device, "--precision", args.precision]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{path} at {size} failed:\n{proc.stderr[-3000:]}")
            runs[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        s, f = runs["stock"], runs["fast"]
        row = {
            "size": size, "image_hw": s["image"], "weights": s["weights"], "masks": s["masks"],
            "identical": s["digest"] == f["digest"] and s["masks"] == f["masks"],
            "stock_s": round(s["seconds"], 2), "clipsam_s": round(f["seconds"], 2),
            "speedup": round(s["seconds"] / f["seconds"], 2),
            "stock_peak_mb": round(s["peak_mb"]), "clipsam_peak_mb": round(f["peak_mb"]),
            "peak_ratio": round(f["peak_mb"] / s["peak_mb"], 3),
            "stock_extra_mb": round(s["peak_mb"] - s["base_mb"]),
            "clipsam_extra_mb": round(f["peak_mb"] - f["base_mb"]),
            "extra_ratio": round((f["peak_mb"] - f["base_mb"]) / max(s["peak_mb"] - s["base_mb"], 1e-9), 3),
            "stock_gpu_peak_mb": s["gpu_peak_mb"], "clipsam_gpu_peak_mb": f["gpu_peak_mb"],
            "device": args.device, "clipsam_precision": args.precision,
        }
        results["runs"].append(row)
        print(f"{size:>5} {row['image_hw']}: {row['masks']} masks, identical={row['identical']}, "
              f"stock {row['stock_s']} s vs clipsam {row['clipsam_s']} s -> {row['speedup']}x faster; "
              f"peak {row['stock_peak_mb']} vs {row['clipsam_peak_mb']} MB -> {row['peak_ratio']}x "
              f"(above baseline {row['stock_extra_mb']} vs {row['clipsam_extra_mb']} MB -> {row['extra_ratio']}x)",
              flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
