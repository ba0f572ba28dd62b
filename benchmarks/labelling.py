"""Benchmark 2 — labelling ~100 masks: a per-mask loop vs clipsam's batched scoring; 1,000 labels vs 10.

    python benchmarks/labelling.py

The per-mask loop is what Semantic-Segment-Anything-style code does: for each mask, cut the crop, encode it
alone, encode the label prompts again, score. It uses the same crops, the same prompt ensemble and the same
softmax as clipsam, so both must pick the same labels (checked). clipsam encodes crops in batches and each label's
text once (cached in memory and on disk: "warm" runs reuse it). CLIP ViT-B/16 with real weights when cached, else
the same architecture with random weights (the timings do not depend on the weights). The loop's comparison runs
clipsam with the loop's rule (labels + 8 negatives); the "default rules" rows add clipsam's vocabulary (~330 more
labels to encode once, then cached) and subtree scoring.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, clip_model, machine, photo  # noqa: E402

from clipsam.core import masks as M  # noqa: E402
from clipsam.core.crops import crop_region  # noqa: E402
from clipsam.core.labels import DEFAULT_NEGATIVES, DEFAULT_TEMPLATES, TextBank  # noqa: E402
from clipsam.core.taxonomy import Taxonomy  # noqa: E402
from clipsam.models.clip import ClipEmbedder  # noqa: E402
from clipsam.stages.label import LabelPolicy, label_tree  # noqa: E402


def random_masks(image: np.ndarray, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(10, h / 3), rng.uniform(10, w / 3)
        out.append(M.encode(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1))
    return out


def per_mask_loop(emb: ClipEmbedder, image: np.ndarray, rles: list[dict], labels: list[str]) -> list[str | None]:
    """Crop, encode and score one mask at a time, re-encoding the label prompts for every mask."""
    names = labels + list(DEFAULT_NEGATIVES)
    out = []
    for rle in rles:
        crop = crop_region(image, M.decode(rle), M.bbox_xywh(rle), size=emb.image_size)
        img_vec = emb.embed_images([crop])[0]
        text = []
        for name in names:
            vecs = emb.embed_texts([t.format(name) for t in DEFAULT_TEMPLATES])
            mean = vecs.mean(0)
            text.append(mean / np.linalg.norm(mean))
        logits = emb.logit_scale * (np.stack(text) @ img_vec)
        best = int(np.argmax(logits))
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out.append(names[best] if best < len(labels) and p[best] >= 0.3 else None)
    return out


def clipsam_batched(emb: ClipEmbedder, image: np.ndarray, rles: list[dict], taxonomy: Taxonomy,
                    bank: TextBank, policy: LabelPolicy) -> list[str | None]:
    """clipsam's label stage on every mask at once (as roots: the containment rules cost no text)."""
    crops = [crop_region(image, M.decode(r), M.bbox_xywh(r), size=emb.image_size) for r in rles]
    feats = np.concatenate([emb.embed_images(crops[i:i + 64]) for i in range(0, len(crops), 64)])
    decisions = label_tree(feats, np.full(len(rles), -1), taxonomy, bank, policy).decisions
    return [d.node.name if d.node else None for d in decisions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", type=int, default=100)
    ap.add_argument("--clip", default="ViT-B-16/openai")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, preprocess, tokenizer, kind = clip_model(args.clip)
    emb = ClipEmbedder(model, preprocess, tokenizer, "cpu", name=args.clip, cache_key=f"bench-{args.clip}-{kind}")
    image = photo(long_side=1024)
    rles = random_masks(image, args.masks)
    ten = [f"object {k}" for k in range(10)]
    flat10 = Taxonomy.from_labels(ten)
    big = Taxonomy.from_dict({"nodes": [{"name": f"category {c}", "children": [f"item {c} {k}" for k in range(99)]}
                                        for c in range(10)]})
    assert len(big) == 1000
    cache = Path(tempfile.mkdtemp(prefix="clipsam-bench-"))

    # the loop's rule: the labels and the 8 negatives in one softmax; clipsam's default adds its ~330-word vocabulary
    same_rules = LabelPolicy(vocabulary=False, union_margin=None)
    default = LabelPolicy()

    def bank() -> TextBank:
        return TextBank(emb, DEFAULT_TEMPLATES, cache_dir=cache)

    with Timer() as loop:
        loop_labels = per_mask_loop(emb, image, rles, ten)
    with Timer() as cold10:
        ours = clipsam_batched(emb, image, rles, flat10, bank(), same_rules)
    with Timer() as warm10:
        clipsam_batched(emb, image, rles, flat10, bank(), same_rules)
    with Timer() as cold1000:
        clipsam_batched(emb, image, rles, big, bank(), same_rules)
    with Timer() as warm1000:
        clipsam_batched(emb, image, rles, big, bank(), same_rules)
    with Timer() as vocab_cold10:
        clipsam_batched(emb, image, rles, flat10, bank(), default)
    with Timer() as vocab_warm10:
        clipsam_batched(emb, image, rles, flat10, bank(), default)
    with Timer() as vocab_warm1000:
        clipsam_batched(emb, image, rles, big, bank(), default)
    result = {
        "machine": machine(), "clip": args.clip, "weights": kind, "masks": len(rles),
        "templates": len(DEFAULT_TEMPLATES),
        "same_labels": loop_labels == ours,
        "per_mask_loop_s": round(loop.seconds, 2), "clipsam_10_cold_s": round(cold10.seconds, 2),
        "clipsam_10_warm_s": round(warm10.seconds, 2), "clipsam_1000_cold_s": round(cold1000.seconds, 2),
        "clipsam_1000_warm_s": round(warm1000.seconds, 2),
        "speedup_vs_loop_cold": round(loop.seconds / cold10.seconds, 1),
        "speedup_vs_loop_warm": round(loop.seconds / warm10.seconds, 1),
        "labels_1000_vs_10_warm": round(warm1000.seconds / warm10.seconds, 3),
        "labels_1000_vs_10_cold": round(cold1000.seconds / cold10.seconds, 2),
        "default_rules_10_cold_s": round(vocab_cold10.seconds, 2),
        "default_rules_10_warm_s": round(vocab_warm10.seconds, 2),
        "default_rules_1000_warm_s": round(vocab_warm1000.seconds, 2),
        "default_rules_speedup_vs_loop_warm": round(loop.seconds / vocab_warm10.seconds, 1),
    }
    print(json.dumps(result, indent=2))
    print(f"\n{len(rles)} masks: per-mask loop {loop.seconds:.1f} s; clipsam {cold10.seconds:.1f} s cold / "
          f"{warm10.seconds:.1f} s warm -> {result['speedup_vs_loop_cold']}x / {result['speedup_vs_loop_warm']}x; "
          f"1000 labels cost {result['labels_1000_vs_10_warm']}x of 10 (warm), {result['labels_1000_vs_10_cold']}x "
          f"(cold); same labels: {result['same_labels']}; default rules (vocabulary, subtree): "
          f"{vocab_cold10.seconds:.1f} s cold / {vocab_warm10.seconds:.1f} s warm, "
          f"1000 labels {vocab_warm1000.seconds:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
