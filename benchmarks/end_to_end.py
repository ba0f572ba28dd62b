"""Benchmark 3 — end to end: stock SamAutomaticMaskGenerator + a per-mask CLIP loop vs clipsam's Segmenter.

    python benchmarks/end_to_end.py

Same SAM ViT-B and CLIP ViT-B/16 weights (real when cached, else random), same photo at long side 1024, same
generator parameters. The stock path labels every mask with the per-mask loop of ``labelling.py`` against the
top level of the ``everyday`` taxonomy; clipsam runs ``Segmenter.segment_everything(image, taxonomy="everyday")``
(merging, the part-whole tree and top-down labels included) with its text cache warm, as in any run after the
first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, clip_model, machine, photo, sam_model  # noqa: E402
from labelling import per_mask_loop  # noqa: E402

from clipsam import Segmenter, load_taxonomy  # noqa: E402
from clipsam.models.clip import ClipEmbedder  # noqa: E402
from clipsam.models.sam import SamProposer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points-per-side", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="clipsam's path: fp32 or bf16 (CUDA)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import os

    os.environ["CLIPSAM_HOME"] = tempfile.mkdtemp(prefix="clipsam-e2e-")  # a private text cache

    sam, sam_kind = sam_model("vit_b")
    clip, preprocess, tokenizer, clip_kind = clip_model("ViT-B-16/openai")
    sam, clip = sam.to(args.device), clip.to(args.device)
    image = photo(long_side=1024)
    params = {"points_per_side": args.points_per_side, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
              "box_nms_thresh": 1.0}
    taxonomy = load_taxonomy("everyday")
    top = [n.name for n in taxonomy.top]

    from segment_anything import SamAutomaticMaskGenerator

    emb = ClipEmbedder(clip, preprocess, tokenizer, args.device, name="bench", cache_key=f"bench-e2e-{clip_kind}")
    with torch.inference_mode(), Timer() as stock:
        records = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **params).generate(image)
        per_mask_loop(emb, image, [r["segmentation"] for r in records], top)

    fast_emb = ClipEmbedder(clip, preprocess, tokenizer, args.device, name="bench",
                            cache_key=f"bench-e2e-{clip_kind}", precision=args.precision)
    seg = Segmenter.from_models(SamProposer(sam, args.device, precision=args.precision), fast_emb, taxonomy=taxonomy,
                                max_side=None, generator_params=params)
    seg.text_bank.embed_nodes(list(taxonomy))  # warm cache, as after the first run
    with Timer() as ours:
        result = seg.segment_everything(image)
    row = {"machine": machine(), "device": args.device, "clipsam_precision": args.precision,
           "weights": {"sam": sam_kind, "clip": clip_kind}, "image_hw": list(image.shape[:2]),
           "points_per_side": args.points_per_side, "stock_masks": len(records), "clipsam_regions": len(result),
           "stock_s": round(stock.seconds, 2), "clipsam_s": round(ours.seconds, 2),
           "speedup": round(stock.seconds / ours.seconds, 2)}
    print(json.dumps(row, indent=2))
    print(f"\nend to end: stock AMG + per-mask CLIP {stock.seconds:.1f} s ({len(records)} masks) vs clipsam "
          f"{ours.seconds:.1f} s ({len(result)} regions, labelled tree) -> {row['speedup']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
