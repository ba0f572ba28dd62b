"""Benchmark 7 — SAM 3 inside clipsam vs SAM ViT-B + CLIP ViT-B/16, on the same 1024-px photo, same run.

    python benchmarks/sam3_vs_sam.py                  # CPU, 2 threads
    python benchmarks/sam3_vs_sam.py --device cuda    # benchmarks/gpu.sh runs this

Full-size architectures (``transformers``' default ``Sam3Config``, the one of ``facebook/sam3``, ~850M parameters;
SAM ViT-B; CLIP ViT-B/16). Weights are random here (none can be downloaded on our machines), which changes no
shape or FLOP, so the times are the real models' -- but random SAM 3 finds a near-random number of instances,
so the per-concept times include decoding every query's mask above a threshold of 0 capped at 5 instances per
phrase (a typical real count). Two jobs:

* **query**: SAM 3 asks one concept ("cat"); SAM + CLIP runs the 32x32 grid and scores every mask.
* **taxonomy**: 20 object labels (``animal``'s and ``vehicle``'s subtrees in ``everyday``): SAM 3 asks 20 concepts
  with the vision features computed once; SAM + CLIP runs the grid and labels every mask.

SAM + CLIP is timed stage by stage: random SAM weights give ~1,000 noise masks with the quality filters off and
~0 with them on, where a real photo gives ~150, so the grid's decoder is timed as it runs (its cost does not depend
on the weights) and CLIP's labelling for ``--regions`` (150) regions; the per-region CLIP cost is the same for one
query or 20 labels (one crop per region; text embeddings are cached).

Reported: vision time (SAM 3's vision tower vs SAM's image encoder), per-concept time, total, peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import Timer, clip_model, machine, peak_rss_mb, photo, sam_model  # noqa: E402

from clipsam import load_taxonomy  # noqa: E402
from clipsam.core.labels import DEFAULT_TEMPLATES  # noqa: E402
from clipsam.models.clip import ClipEmbedder  # noqa: E402
from clipsam.models.sam import SamProposer  # noqa: E402
from clipsam.models.sam3 import Sam3Proposer, build_sam3_model  # noqa: E402
from clipsam.stages.concepts import object_queries  # noqa: E402


def twenty_labels():
    tax = load_taxonomy("everyday")
    queries = object_queries([tax.get("animal"), tax.get("vehicle")])
    return tax, queries[:20]


def peak_cuda_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--regions", type=int, default=150, help="regions CLIP labels in the SAM + CLIP path")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = photo(long_side=1024)
    tax, queries = twenty_labels()
    phrases = [q.phrase for q in queries]
    rows: dict[str, dict[str, float | None]] = {}

    # -- SAM 3 (full size, random weights) ------------------------------------------------------------------
    with Timer() as t_build:
        proposer = Sam3Proposer(build_sam3_model(seed=0), args.device, name="sam3-random", threshold=0.0,
                                max_instances=5)
    params = sum(p.numel() for p in proposer.model.parameters()) / 1e6
    proposer.embed(image[:64, :64])  # warm-up (allocations, kernels)
    with Timer() as t_vision:
        emb = proposer.embed(image)
    with Timer() as t_one:
        proposer.find(emb, ["cat"])
    with Timer() as t_text:
        proposer._text_features(phrases)  # the text features of the 20 labels (cached after the first image)
    with Timer() as t_twenty:
        hits = proposer.find(emb, phrases)
    rows["sam3"] = {"params_M": params, "build_s": t_build.seconds, "vision_s": t_vision.seconds,
                    "query_total_s": t_vision.seconds + t_one.seconds, "per_concept_s": t_twenty.seconds / 20,
                    "text_20_s": t_text.seconds, "taxonomy_total_s": t_vision.seconds + t_text.seconds +
                    t_twenty.seconds, "instances": sum(len(h) for h in hits), "peak_rss_mb": peak_rss_mb(),
                    "peak_cuda_mb": peak_cuda_mb(args.device)}
    del proposer, emb
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    print(f"SAM 3: {json.dumps(rows['sam3'])}", flush=True)

    # -- SAM ViT-B + CLIP ViT-B/16 (clipsam's default path), stage by stage ---------------------------------
    # Random SAM weights give ~1,000 noise masks with the quality filters off and ~0 with them on; a real photo
    # gives ~150. So the grid's decoder is timed as it runs (its cost does not depend on the weights) and CLIP
    # labelling is timed for REGIONS regions, the count of a real photo.
    from clipsam.core import masks as M
    from clipsam.core.labels import TextBank
    from clipsam.stages.embed import embed_regions

    sam, sam_kind = sam_model("vit_b")
    clip, preprocess, tokenizer, clip_kind = clip_model("ViT-B-16/openai")
    proposer = SamProposer(sam, args.device, name="vit_b")
    embedder = ClipEmbedder(clip, preprocess, tokenizer, args.device, name="ViT-B-16")
    proposer.embed(image[:64, :64])
    with Timer() as t_sam_vision:
        sam_emb = proposer.embed(image)
    with Timer() as t_grid:
        proposer.generate(image, sam_emb, points_per_side=args.points_per_side)
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    rles = []
    for _ in range(args.regions):  # boxes of assorted sizes stand in for a real photo's masks
        bh, bw = int(rng.integers(20, h // 2)), int(rng.integers(20, w // 2))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        m = np.zeros((h, w), bool)
        m[y:y + bh, x:x + bw] = True
        rles.append(M.encode(m))
    bank = TextBank(embedder, DEFAULT_TEMPLATES)
    with Timer() as t_text:
        bank.embed([(q.phrase,) for q in queries] + [("cat",)])
    with Timer() as t_crops:
        feats = embed_regions(image, rles, embedder)
    with Timer() as t_scores:
        _ = feats @ bank.embed([(q.phrase,) for q in queries]).T
    label_s = t_crops.seconds + t_scores.seconds
    rows["sam_clip"] = {"weights": f"SAM {sam_kind}, CLIP {clip_kind}", "vision_s": t_sam_vision.seconds,
                        "grid_decoder_s": t_grid.seconds, "regions": args.regions, "clip_label_s": label_s,
                        "text_21_s": t_text.seconds,
                        "query_total_s": t_sam_vision.seconds + t_grid.seconds + label_s,
                        "taxonomy_total_s": t_sam_vision.seconds + t_grid.seconds + label_s,
                        "peak_rss_mb": peak_rss_mb(), "peak_cuda_mb": peak_cuda_mb(args.device)}

    s3, sc = rows["sam3"], rows["sam_clip"]
    print(f"# SAM 3 (full size, random weights) vs SAM ViT-B + CLIP ViT-B/16 — {machine()}, {args.device}")
    print(f"photo {image.shape[1]}x{image.shape[0]}; SAM 3 {s3['params_M']:.0f}M parameters")
    print("| job | SAM 3 (s) | SAM + CLIP (s) | SAM 3 / SAM+CLIP |")
    print("| --- | ---: | ---: | ---: |")
    for job, key in (("vision pass", "vision_s"), ("query 'cat'", "query_total_s"),
                     ("20-label taxonomy", "taxonomy_total_s")):
        print(f"| {job} | {s3[key]:.1f} | {sc[key]:.1f} | {s3[key] / sc[key]:.2f}x |")
    print(f"SAM 3 per concept: {s3['per_concept_s']:.2f} s; text features of 20 labels: {s3['text_20_s']:.2f} s "
          "(cached after the first image)")
    print(f"SAM + CLIP: encoder {sc['vision_s']:.1f} s, {args.points_per_side}x{args.points_per_side} grid decoder "
          f"{sc['grid_decoder_s']:.1f} s, CLIP labels for {sc['regions']} regions {sc['clip_label_s']:.1f} s "
          f"(one crop each; the query and the 20 labels cost the same)")
    print(f"peak resident memory: {s3['peak_rss_mb']:.0f} MB after SAM 3, {sc['peak_rss_mb']:.0f} MB after both")
    if s3["peak_cuda_mb"] is not None:
        print(f"peak CUDA memory: SAM 3 {s3['peak_cuda_mb']:.0f} MB, SAM + CLIP {sc['peak_cuda_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "device": args.device, "time": time.time(),
                                               **rows}, indent=2))


if __name__ == "__main__":
    main()
