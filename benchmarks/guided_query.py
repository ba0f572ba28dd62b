"""Benchmark — grid vs guided prompts for a query and a taxonomy; crop vs pooled region features.

    python benchmarks/guided_query.py                   # SAM ViT-B + CLIP ViT-B/16, 1024-px photo
    python benchmarks/guided_query.py --points-per-side 16

* **grid**: SAM's automatic point grid (one decoder prompt per point), every mask scored by CLIP on its crop;
* **guided**: one dense CLIP pass gives a relevance map per target; each high-relevance region becomes two SAM
  prompts (peak point + box, peak point alone) on the same cached image embedding; the masks are scored the same
  way.

Both run the same segmenter (text cache warm, image embedding computed once per strategy and counted in its
time). With random weights (no weights can be downloaded here) SAM's quality scores are meaningless, so the grid
keeps every mask that survives NMS (``pred_iou_thresh=0``, ``stability_score_thresh=0``); the guided maps are noise
too, so every map is made to spend its full seed budget (:func:`full_budget`): guided's worst case.
Then 100 masks are embedded as crops and as pooled dense features, and their top labels compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, clip_model, machine, photo, sam_model  # noqa: E402
from labelling import random_masks  # noqa: E402

from clipsam import Segmenter, Taxonomy  # noqa: E402
from clipsam.models.clip import ClipEmbedder  # noqa: E402
from clipsam.models.sam import SamProposer  # noqa: E402
from clipsam.stages import guide  # noqa: E402
from clipsam.stages.embed import embed_regions  # noqa: E402
from clipsam.stages.guide import pool_regions  # noqa: E402

#: A 20-node taxonomy: 4 categories with 4 children each.
TAXONOMY = {"name": "bench20", "nodes": [
    {"name": "animal", "children": ["cat", "dog", "bird", "horse"]},
    {"name": "vehicle", "children": ["car", "bicycle", "bus", "boat"]},
    {"name": "furniture", "children": ["chair", "couch", "table", "bed"]},
    {"name": "food", "children": ["apple", "pizza", "cake", "banana"]},
]}


class Counting:
    """A proposer that counts decoder prompts and times its calls."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.prompts = 0
        self.seconds = {"embed": 0.0, "decoder": 0.0}

    def embed(self, image):
        t = time.perf_counter()
        out = self.inner.embed(image)
        self.seconds["embed"] += time.perf_counter() - t
        return out

    def predict(self, embedding, **kwargs):
        t = time.perf_counter()
        self.prompts += 1
        out = self.inner.predict(embedding, **kwargs)
        self.seconds["decoder"] += time.perf_counter() - t
        return out

    def generate(self, image, embedding=None, **params):
        t = time.perf_counter()
        side = params.get("points_per_side") or 32
        self.prompts += side * side
        out = self.inner.generate(image, embedding, **params)
        self.seconds["decoder"] += time.perf_counter() - t
        return out


def full_budget() -> None:
    """With random weights the relevance maps are noise that rarely reaches the threshold, so guided would decode
    nothing. Make every map spend its whole budget instead (seeds at the map's top 5 % of cells, up to
    ``MAX_SEEDS`` per target): guided's worst case, what it costs when every target yields the most seeds."""
    original = guide.find_seeds

    def find_seeds(rel, *, threshold=guide.MIN_RELEVANCE, max_seeds=guide.MAX_SEEDS, within=None):
        cut = float(np.quantile(rel if within is None else rel[within.astype(bool)], 0.95)) if rel.size else 0.0
        return original(rel, threshold=min(threshold, cut), max_seeds=max_seeds, within=within)

    guide.find_seeds = find_seeds


def run(seg: Segmenter, counting: Counting, image: np.ndarray, strategy: str, query: str | None) -> dict:
    seg.caches = type(seg.caches)()  # each strategy pays for its own image embedding
    counting.prompts = 0
    counting.seconds = {"embed": 0.0, "decoder": 0.0}
    with Timer() as total:
        if query is None:
            result = seg.segment_everything(image, strategy=strategy)
        else:
            result = seg.segment(image, query, strategy=strategy)
    other = total.seconds - counting.seconds["embed"] - counting.seconds["decoder"]
    return {"strategy": strategy, "regions": len(result), "decoder_prompts": counting.prompts,
            "sam_embed_s": round(counting.seconds["embed"], 2), "sam_decoder_s": round(counting.seconds["decoder"], 2),
            "clip_and_rest_s": round(other, 2), "total_s": round(total.seconds, 2)}


def agreement_in_worlds(seeds: int = 5) -> dict[str, float]:
    """Same top label (among a scene's object names) from crops and from pooled dense features, for every true
    object of the CLIP-like world, and for 100 random masks with the tiny random-weight CLIP."""
    from clipsam.models.build import build_embedder
    from clipsam.testing.world import CLIPLikeWorld, pooled_agreement

    agree = total = 0
    for seed in range(seeds):
        world = CLIPLikeWorld(300 + seed)
        for k in range(4):
            a, n = pooled_agreement(world, world.scene(k))
            agree, total = agree + a, total + n
    tiny = build_embedder("tiny-random", "cpu")
    image = photo(long_side=256)
    rles = random_masks(image, 100)
    text = tiny.embed_texts([f"a photo of a {n}." for node in TAXONOMY["nodes"] for n in node["children"]])
    same = (embed_regions(image, rles, tiny) @ text.T).argmax(1) == (pool_regions(tiny.dense_features(image), rles)
                                                                     @ text.T).argmax(1)
    return {"clip_like_objects": total, "clip_like_same_top_label": round(agree / total, 3),
            "tiny_random_same_top_label_of_16": round(float(same.mean()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--agreement-only", action="store_true", help="only the crop-vs-pooled agreement in the "
                    "CLIP-like world and with the tiny random CLIP (seconds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    agreement = agreement_in_worlds()
    print(f"crops vs pooled, same top label: CLIP-like world {agreement['clip_like_same_top_label']:.1%} of "
          f"{agreement['clip_like_objects']} objects; tiny random CLIP "
          f"{agreement['tiny_random_same_top_label_of_16']:.0%} of 100 masks (random weights: no meaning)")
    if args.agreement_only:
        return
    full_budget()
    sam, sam_kind = sam_model("vit_b")
    model, preprocess, tokenizer, clip_kind = clip_model("ViT-B-16/openai")
    emb = ClipEmbedder(model, preprocess, tokenizer, "cpu", name="ViT-B-16", cache_key=f"bench-guided-{clip_kind}")
    counting = Counting(SamProposer(sam, "cpu"))
    image = photo(long_side=1024)
    params = {"points_per_side": args.points_per_side, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    cache = Path(tempfile.mkdtemp(prefix="clipsam-bench-"))
    out: dict = {"machine": machine(), "weights": {"sam": sam_kind, "clip": clip_kind}, "image": list(image.shape[:2]),
                 "points_per_side": args.points_per_side, "agreement": agreement}
    for name, query, tax in (("query 'cat'", "cat", None), ("20-node taxonomy", None, Taxonomy.from_dict(TAXONOMY))):
        seg = Segmenter.from_models(counting, emb, taxonomy=tax, generator_params=params, text_cache=True)
        seg.text_bank.cache_dir = cache
        seg.text_bank.embed([("warm",)])  # the text cache is warm in any run after the first: warm it here
        seg.segment(np.zeros((64, 64, 3), np.uint8), "cat", strategy="guided")
        rows = [run(seg, counting, image, s, query) for s in ("grid", "guided")]
        rows[1]["speedup"] = round(rows[0]["total_s"] / rows[1]["total_s"], 1)
        out[name] = rows
        print(f"\n{name}")
        print("| strategy | regions | decoder prompts | SAM embed | SAM decoder | CLIP + rest | total |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['strategy']} | {r['regions']} | {r['decoder_prompts']} | {r['sam_embed_s']} s | "
                  f"{r['sam_decoder_s']} s | {r['clip_and_rest_s']} s | {r['total_s']} s |")
        print(f"guided is {rows[1]['speedup']}x faster end to end")
    # crops vs pooled dense features for 100 masks
    rles = random_masks(image, 100)
    with Timer() as crops_t:
        by_crop = embed_regions(image, rles, emb)
    with Timer() as pooled_t:
        pooled = pool_regions(emb.dense_features(image), rles)
    labels = [n for node in TAXONOMY["nodes"] for n in node["children"]]
    text = emb.embed_texts([f"a photo of a {n}." for n in labels])
    agree = float(np.mean((by_crop @ text.T).argmax(1) == (pooled @ text.T).argmax(1)))
    out["region_features"] = {"masks": len(rles), "crops_s": round(crops_t.seconds, 2),
                              "pooled_s": round(pooled_t.seconds, 2),
                              "speedup": round(crops_t.seconds / pooled_t.seconds, 1),
                              "same_top_label_of_16": round(agree, 3)}
    print(f"\n100 masks: crops {crops_t.seconds:.1f} s, pooled {pooled_t.seconds:.1f} s "
          f"({out['region_features']['speedup']}x); same top label (16 labels) {agree:.0%} "
          f"({clip_kind} weights)")
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
