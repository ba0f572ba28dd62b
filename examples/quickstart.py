"""clipsam on real photos: a click, a box, a text query and a labelled part-whole tree, with overlays.

    python examples/quickstart.py                                   # real models (downloads ~700 MB once)
    python examples/quickstart.py --sam tiny-random --clip tiny-random   # no weights: wiring only, output meaningless

Overlays and JSON go to ``--out`` (default ``out/``). The photos are scikit-image's samples (Chelsea the cat,
the astronaut Eileen Collins), which ship with scikit-image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skimage import data

import clipsam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default="vit_b")
    parser.add_argument("--clip", default="ViT-B-16/openai")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    tiny = args.sam == "tiny-random"
    params = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0} if tiny else {}
    seg = clipsam.Segmenter(sam=args.sam, clip=args.clip, generator_params=params)
    cat = data.chelsea()  # 451 x 300

    # 1. A click on the cat's left eye: SAM returns three candidate masks, best (highest predicted IoU) first.
    click = seg.segment_prompt(cat, points=[[170, 115]])
    click[:1].save_overlay(args.out / "click.png", cat)
    print(f"click: {len(click)} masks, best predicted IoU {click.best.predicted_iou:.2f}, area {click[0].area} px")

    # 2. The same click plus a negative click on the nose, refined with the first answer's logits.
    refined = seg.segment_prompt(cat, points=[[170, 115], [262, 240]], labels=[1, 0], mask=click.low_res_logits[0])
    refined.save_overlay(args.out / "click_refined.png", cat)

    # 3. A box around the head (x0, y0, x1, y1). The image embedding is reused: no second encoder pass.
    box = seg.segment_prompt(cat, box=[20, 0, 400, 300])
    box.save_overlay(args.out / "box.png", cat)
    print(f"box: area {box[0].area} px, predicted IoU {box[0].predicted_iou:.2f}")

    # 4. A text query: every region CLIP scores as a cat (against background labels), as COCO RLE.
    found = seg.segment(cat, "cat")
    found.save_overlay(args.out / "text_cat.png", cat)
    found.to_json(args.out / "text_cat.json", indent=2)
    print(f"text 'cat': {len(found)} regions" + (f", best score {found.best.score:.2f}" if len(found) else ""))

    # 5. Everything, labelled with the shipped 'everyday' taxonomy and nested into a part-whole tree.
    person = data.astronaut()
    everything = seg.segment_everything(person, taxonomy="everyday")
    everything.save_overlay(args.out / "astronaut_tree.png", person)
    print(everything.format_tree(max_depth=2))


if __name__ == "__main__":
    main()
