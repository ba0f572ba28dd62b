"""SAM 2.1 beside SAM ViT-B: image embedding and automatic generation on the same photo, same parameters.

    python benchmarks/sam2_vs_vitb.py

Real weights when cached, else random ones (then every mask is kept: pred_iou_thresh=0, stability_score_thresh=0,
box_nms_thresh=1.0). ViT-B runs clipsam's stock-identical fast generator; SAM 2.1 runs clipsam's stock-identical
fast generator (clipsam.models.amg2) and, in the same run, the sam2 package's own SAM2AutomaticMaskGenerator (the
masks are checked RLE-identical).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, machine, photo, sam_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--sam2", default="sam2.1_hiera_tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from clipsam import weights as W
    from clipsam.models.sam import SamProposer
    from clipsam.models.sam2 import Sam2Proposer, build_sam2_model

    image = photo(long_side=1024)
    params = {"points_per_side": args.points_per_side, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
              "box_nms_thresh": 1.0}
    vitb, vitb_kind = sam_model("vit_b")
    ckpt = W.get(args.sam2)
    sam2 = build_sam2_model(ckpt.arch, seed=0)
    sam2_kind = "random"
    if W.is_cached(ckpt.name):
        sam2.load_state_dict(W.load_state_dict(W.ensure(ckpt.name, download=False), ckpt))
        sam2_kind = "real"
    rows, rles = [], {}
    dev = args.device
    for name, proposer, kind in (("vit_b", SamProposer(vitb, dev), vitb_kind),
                                 (args.sam2, Sam2Proposer(sam2, dev), sam2_kind),
                                 (args.sam2 + " (stock generator)", Sam2Proposer(sam2, dev, fast=False), sam2_kind)):
        with Timer() as embed:
            emb = proposer.embed(image)
        with Timer() as gen:
            masks = proposer.generate(image, emb, **params)
        rles[name] = [p.rle for p in masks]
        n_params = sum(p.numel() for p in proposer.model.parameters()) / 1e6
        rows.append({"model": name, "weights": kind, "params_m": round(n_params, 1),
                     "embed_s": round(embed.seconds, 2), "generate_s": round(gen.seconds, 2),
                     "total_s": round(embed.seconds + gen.seconds, 2), "masks": len(masks)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine(), "device": dev, "image_hw": list(image.shape[:2]),
              "points_per_side": args.points_per_side,
              "runs": rows, "sam2_vs_vitb_total": round(rows[1]["total_s"] / rows[0]["total_s"], 2),
              "sam2_generator_speedup": round(rows[2]["generate_s"] / rows[1]["generate_s"], 2),
              "sam2_identical_to_stock": rles[args.sam2] == rles[args.sam2 + " (stock generator)"]}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
