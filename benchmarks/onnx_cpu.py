"""Issue 25 — ONNX Runtime on a CPU: stock SAM + CLIP loop vs clipsam on PyTorch vs clipsam on ONNX Runtime.

    python benchmarks/onnx_cpu.py                        # everything, 16x16 and 32x32 points, one query, label job
    python benchmarks/onnx_cpu.py --grids 16 --photos 4  # shorter

One process, one 1024-px photo, the same weights for every path (ViT-B and CLIP ViT-B/16: real when cached, else
random; with random weights SAM's quality thresholds are off so that every mask is kept, as users' masks are with
real weights):

* ``everything``: stock ``SamAutomaticMaskGenerator.generate`` vs ``segment_everything`` (no taxonomy: every mask,
  unlabelled) on PyTorch and on ONNX Runtime, at each grid; the embedding is part of every timing;
* ``query``: ``segment(image, "dog")`` with the everyday taxonomy, PyTorch vs ONNX Runtime (stock has no query);
* ``label``: ``LabelJob`` over N photos (COCO out), PyTorch vs ONNX Runtime (and with ``--fast``, ONNX Runtime with
  ``speed="fast"``: CLIP's image tower in int8), with each stage's seconds;
* ``parts``: the heavy parts alone (encoder, a decoder batch, CLIP's towers), each path best of 3;
* ``arena``: the decoder's session with and without ONNX Runtime's memory arena (wall, user and system time);
* ``clip``: CLIP's towers at 64 crops / 256 texts a pass against clipsam's CPU batches, both runtimes;
* ``rounding``: where a mask differs between the runtimes, whether each flipped pixel's logit lies within the two
  runtimes' float disagreement of SAM's threshold (one generator batch of 64 prompts).

Agreement of ONNX Runtime with PyTorch over every region the user receives: the share of masks identical to one of
PyTorch's (same RLE), and each mask's best IoU with PyTorch's (the worst one is printed); labels: the share of regions
whose label is the same. The export's own time (once per checkpoint, then cached) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, best_ious, clip_model, machine, peak_rss_mb, photo, rss_mb, sam_model  # noqa: E402

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "cat", "camera", "immunohistochemistry", "hubble_deep_field")


def _agreement(reference: list, other: list) -> dict:
    """Identical share and best IoUs of *other*'s masks (RLE dicts) against *reference*'s."""
    ref = {json.dumps(r, sort_keys=True) for r in reference}
    same = sum(json.dumps(r, sort_keys=True) in ref for r in other)
    differ = [r for r in other if json.dumps(r, sort_keys=True) not in ref]
    worst = float(best_ious(differ, reference).min()) if differ else 1.0
    return {"masks": len(other), "reference_masks": len(reference), "identical": same,
            "identical_share": round(same / max(1, len(other)), 6), "worst_iou": round(worst, 6)}


def _stock(model: torch.nn.Module, image: np.ndarray, params: dict) -> tuple[list, float]:
    from segment_anything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params)
    with Timer() as t, torch.inference_mode():
        records = gen.generate(image)
    return [r["segmentation"] for r in records], t.seconds


def _segmenters(sam: torch.nn.Module, clip: tuple, fast: bool = False) -> dict:
    """``torch`` and ``onnx`` segmenters (exact), and with *fast* ``onnx-fast`` (``speed="fast"``: CLIP's image
    tower in int8; the grid is set by every call here, so the masks are ``onnx``'s)."""
    from clipsam import Segmenter

    model, preprocess, tokenizer, _ = clip
    out = {}
    for name in ("torch", "onnx", "onnx-fast") if fast else ("torch", "onnx"):
        with Timer() as t:
            out[name] = Segmenter.from_models(sam, model, preprocess=preprocess, tokenizer=tokenizer,
                                              device="cpu", runtime=name.split("-")[0], taxonomy="everyday",
                                              text_cache=False, speed="fast" if name.endswith("fast") else "exact")
        print(f"# {name}: ready in {t.seconds:.1f} s (ONNX: export or cache, and sessions)", flush=True)
    return out


def _parts(sam: torch.nn.Module, clip: tuple, repeat: int = 3) -> dict:
    """The heavy parts alone, same inputs, best of *repeat*: SAM's encoder (one 1024-px image), its decoder (64
    prompts, one generator batch), CLIP's image tower (64 crops; also the int8 one of ``speed="fast"``) and text
    tower (256 texts)."""
    from clipsam.models import onnx

    model, _, tokenizer, _ = clip
    osam, oclip = onnx.onnx_sam(sam), onnx.onnx_clip(model, 224)
    fast = onnx.int8_image_tower(oclip)

    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            with Timer() as t:
                fn()
            times.append(t.seconds)
        return round(min(times), 2)

    out = {}
    with torch.inference_mode():
        emb, pe = torch.randn(1, 256, 64, 64), sam.prompt_encoder.get_dense_pe()
        points = (torch.rand(64, 1, 2) * 1024, torch.ones(64, 1, dtype=torch.int))
        sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
        crops, tokens = torch.randn(64, 3, 224, 224), tokenizer(["a photo of a dog."] * 256)
        image = torch.randn(1, 3, 1024, 1024)
        runs = {"decoder_64_prompts": {"torch": lambda: sam.mask_decoder(emb, pe, sparse, dense, True),
                                       "onnx": lambda: osam.mask_decoder(emb, pe, sparse, dense, True)},
                "clip_image_64_crops": {"torch": lambda: model.encode_image(crops),
                                        "onnx": lambda: oclip.encode_image(crops),
                                        "onnx_int8": lambda: fast.encode_image(crops)},
                "clip_text_256": {"torch": lambda: model.encode_text(tokens),
                                  "onnx": lambda: oclip.encode_text(tokens)},
                "image_encoder": {"torch": lambda: sam.image_encoder(image), "onnx": lambda: osam.image_encoder(image)}}
        for part, paths in runs.items():
            out[part] = {path: best(fn) for path, fn in paths.items()}
            print(json.dumps({part: out[part]}), flush=True)
    return out


def _arena(sam: torch.nn.Module, repeat: int = 3) -> dict:
    """The decoder's session with and without ONNX Runtime's memory arena: one 16x16 grid's four batches of 64
    prompts, 8 prompts a call as clipsam sends them; wall, user and system seconds (best of *repeat*; the system time
    is the pages a call without the arena maps and faults in afresh). Memory is not compared here: both sessions live
    in one process (measure it in two)."""
    from clipsam.models import onnx

    path = onnx.onnx_sam(sam).mask_decoder.graph.path
    emb, pe = torch.randn(1, 256, 64, 64), sam.prompt_encoder.get_dense_pe()
    out = {}
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(torch.rand(64, 1, 2) * 1024, torch.ones(64, 1, dtype=torch.int)),
                                           boxes=None, masks=None)
        for arena in (False, True):
            graph = onnx.Graph(path, "sam-mask-decoder", arena=arena)
            runs = []
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), os.times()
                for _batch in range(4):
                    for k in range(0, 64, 8):
                        graph(emb, pe, sparse[k:k + 8], dense[k:k + 8])
                c1 = os.times()
                runs.append((time.perf_counter() - t0, c1.user - c0.user, c1.system - c0.system))
            wall, user, system = min(runs)
            out["arena" if arena else "no_arena"] = {"wall_s": round(wall, 2), "user_s": round(user, 2),
                                                    "system_s": round(system, 2)}
    return out


def _clip_batches(clip: tuple, repeat: int = 2) -> dict:
    """CLIP's towers at stock-like batches (64 crops, 256 texts a pass) against clipsam's CPU batches
    (``CPU_IMAGE_BATCH`` crops, ``CPU_TEXT_BATCH`` texts), in PyTorch and ONNX Runtime (and the int8 image tower of
    ``speed="fast"``), best of *repeat*; the largest difference between the two batchings' embeddings."""
    from clipsam.models import onnx
    from clipsam.models.clip import CPU_IMAGE_BATCH, CPU_TEXT_BATCH

    model, _, tokenizer, _ = clip
    oclip = onnx.onnx_clip(model, 224)
    crops = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer([f"a photo of a {w}." for w in range(256)])
    out: dict = {}
    with torch.inference_mode():
        for tower, x, big, small in (("image", crops, 64, CPU_IMAGE_BATCH), ("text", tokens, 256, CPU_TEXT_BATCH)):
            runtimes = [("torch", model), ("onnx", oclip)] + ([("onnx_int8", onnx.int8_image_tower(oclip))]
                                                              if tower == "image" else [])
            for runtime, m in runtimes:
                fn = m.encode_image if tower == "image" else m.encode_text
                row, embs = {}, []
                for step in (big, small):
                    best = float("inf")
                    for _ in range(repeat):
                        t0 = time.perf_counter()
                        e = torch.cat([fn(x[k:k + step]) for k in range(0, len(x), step)])
                        best = min(best, time.perf_counter() - t0)
                    row[f"{step}_a_pass_s"] = round(best, 2)
                    embs.append(e)
                row["max_abs_diff"] = float((embs[0] - embs[1]).abs().max())
                out[f"{tower}_{runtime}"] = row
                print(json.dumps({f"clip_{tower}_{runtime}": row}), flush=True)
    return out


def _rounding(sam: torch.nn.Module, image: np.ndarray, prompts: int = 64) -> dict:
    """Why a mask differs between the runtimes, measured rather than assumed: one generator batch (the first
    *prompts* points of the 16x16 grid) through each runtime's own encoder and decoder, both upsampled to the photo by
    SAM's own ``postprocess_masks`` and thresholded at its ``mask_threshold``. Reports how many of the masks are
    identical, how many pixels flip, the largest |logit| (PyTorch's) at a flipped pixel against the largest |logit
    difference| between the runtimes anywhere -- a flip whose logit lies within that difference of the threshold is
    float rounding -- and how many pixels lie that close to the threshold at all."""
    from segment_anything.utils.amg import build_point_grid
    from segment_anything.utils.transforms import ResizeLongestSide

    from clipsam.models import onnx

    osam = onnx.onnx_sam(sam)
    resize = ResizeLongestSide(sam.image_encoder.img_size)
    h, w = image.shape[:2]
    x = torch.as_tensor(resize.apply_image(image)).permute(2, 0, 1)[None].float()
    size = tuple(x.shape[-2:])
    x = sam.preprocess(x)
    pts = build_point_grid(16)[:prompts] * np.array([w, h])
    coords = torch.as_tensor(resize.apply_coords(pts, (h, w)), dtype=torch.float)[:, None, :]
    out = {"prompts": prompts, "masks": 0, "identical": 0, "flipped_pixels": 0, "max_abs_logit_at_flip": 0.0,
           "max_abs_logit_diff": 0.0, "pixels_within_diff": 0, "pixels": 0}
    scale: list[float] = []  # the logits' own size: the median |logit| of each chunk (every 8th pixel)
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(coords, torch.ones(prompts, 1, dtype=torch.int)), boxes=None,
                                           masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        low = {}
        for name, model in (("torch", sam), ("onnx", osam)):
            low[name] = model.mask_decoder(model.image_encoder(x), pe, sparse, dense, True)[0]
        for k in range(0, prompts, 8):  # 8 prompts (24 masks) at a time: full-resolution logits are large
            a = sam.postprocess_masks(low["torch"][k:k + 8], size, (h, w)).flatten(0, 1)
            b = sam.postprocess_masks(low["onnx"][k:k + 8], size, (h, w)).flatten(0, 1)
            flip = (a > sam.mask_threshold) != (b > sam.mask_threshold)
            diff = float((a - b).abs().max())
            out["masks"] += len(a)
            out["identical"] += int((~flip.flatten(1).any(1)).sum())
            out["flipped_pixels"] += int(flip.sum())
            if flip.any():
                out["max_abs_logit_at_flip"] = max(out["max_abs_logit_at_flip"],
                                                   float((a[flip] - sam.mask_threshold).abs().max()))
            out["max_abs_logit_diff"] = max(out["max_abs_logit_diff"], diff)
            out["pixels_within_diff"] += int(((a - sam.mask_threshold).abs() <= diff).sum())
            out["pixels"] += a.numel()
            scale.append(float((a[:, ::8, ::8] - sam.mask_threshold).abs().median()))
    out["identical_share"] = round(out["identical"] / out["masks"], 6)
    out["median_abs_logit"] = float(np.median(scale))
    return out


def _fast_labels(sam: torch.nn.Module, clip: tuple, image: np.ndarray, grid: int, keep_all: dict) -> dict:
    """Region for region, the labels of ``speed="fast"`` against exact, both on ONNX Runtime (the same masks), on
    one photo, with no confidence threshold and no background labels, so that every region has a label to
    compare."""
    from clipsam import Segmenter

    model, preprocess, tokenizer, _ = clip
    labels = {}
    for name in ("onnx", "onnx-fast"):
        seg = Segmenter.from_models(sam, model, preprocess=preprocess, tokenizer=tokenizer, device="cpu",
                                    runtime="onnx", taxonomy="everyday", text_cache=False, min_confidence=0.0,
                                    part_confidence=0.0, negatives=(),
                                    speed="fast" if name.endswith("fast") else "exact")
        result = seg.segment_everything(image, points_per_side=grid, **keep_all)
        labels[name] = [(r.label, json.dumps(r.rle, sort_keys=True)) for r in result.regions]
    same_masks = [a[1] == b[1] for a, b in zip(labels["onnx"], labels["onnx-fast"], strict=True)]
    same = sum(a == b for a, b in zip(labels["onnx"], labels["onnx-fast"], strict=True))
    return {"grid": grid, "regions": len(labels["onnx"]), "same_masks": sum(same_masks), "same_labels": same,
            "same_label_share": round(same / max(1, len(labels["onnx"])), 4)}


def _everything(segs: dict, sam: torch.nn.Module, image: np.ndarray, grid: int, keep_all: dict,
                repeat: int) -> dict:
    """Each path *repeat* times, interleaved (stock, torch, onnx, stock, ...); the best time of each (a shared
    machine's noise only ever adds time); each run on a fresh embedding cache."""
    from clipsam.pipelines.requests import Caches

    params = {"points_per_side": grid, **keep_all}
    times: dict = {"stock": [], "torch": [], "onnx": []}
    masks: dict = {}
    stages: dict = {}  # each runtime's stage seconds in its best run
    for _ in range(repeat):
        stock, t_stock = _stock(sam, image, params)
        times["stock"].append(t_stock)
        for runtime, seg in segs.items():
            seg.caches = Caches()
            with Timer() as t:
                result = seg.segment_everything(image, taxonomy=None, label=False, **params)
            if t.seconds <= min(times[runtime], default=float("inf")):
                stages[runtime] = {k: round(v, 2) for k, v in seg.last_stats.get("seconds", {}).items()}
            times[runtime].append(t.seconds)
            masks[runtime] = [r.rle for r in result.regions]
    times = {k: min(v) for k, v in times.items()}
    t_stock = times["stock"]
    row = {"grid": grid, "stock_s": round(t_stock, 2), "torch_s": round(times["torch"], 2),
           "onnx_s": round(times["onnx"], 2), "onnx_vs_stock": round(t_stock / times["onnx"], 2),
           "onnx_vs_torch": round(times["torch"] / times["onnx"], 2),
           "torch_vs_stock": round(t_stock / times["torch"], 2), "stock_masks": len(stock),
           "onnx_vs_torch_masks": _agreement(masks["torch"], masks["onnx"]),
           "torch_masks_in_stock": _agreement(stock, masks["torch"])["identical"], "stage_seconds": stages}
    return row


def _query(segs: dict, image: np.ndarray, grid: int, keep_all: dict) -> dict:
    from clipsam.pipelines.requests import Caches

    times, results = {}, {}
    for runtime, seg in segs.items():
        seg.caches = Caches()
        with Timer() as t:
            results[runtime] = seg.segment(image, "dog", points_per_side=grid, **keep_all)
        times[runtime] = t.seconds
    agree = _agreement([r.rle for r in results["torch"].regions], [r.rle for r in results["onnx"].regions])
    return {"grid": grid, "torch_s": round(times["torch"], 2), "onnx_s": round(times["onnx"], 2),
            "onnx_vs_torch": round(times["torch"] / times["onnx"], 2), "masks": agree,
            "regions_same_label": sum(a.label == b.label and a.rle == b.rle for a, b in
                                      zip(results["torch"].regions, results["onnx"].regions, strict=False)),
            "labels_same": [r.label for r in results["torch"].regions] == [r.label for r in results["onnx"].regions]}


def _label(segs: dict, photos: int, grid: int, keep_all: dict) -> dict:
    from PIL import Image

    from clipsam.dataset import LabelJob, list_images, run_local
    from clipsam.pipelines.requests import Caches

    root = Path(tempfile.mkdtemp())
    for i in range(photos):
        Image.fromarray(photo(long_side=1024, name=PHOTOS[i % len(PHOTOS)])).save(root / f"p{i:02d}.png")
    times, labels, stages, memory = {}, {}, {}, {}
    for runtime, seg in segs.items():
        seg.caches = Caches()
        stages[runtime] = _summing_stages(seg)
        job = LabelJob(root / f"out-{runtime}", "everyday", segmenter_spec={"sam": "vit_b", "clip": "ViT-B-16/openai"},
                       segment_params={"points_per_side": grid, **keep_all})
        items = list_images(root)
        record = job.prepare(items=items)
        with Timer() as t:
            run_local(job, items, segmenter=seg)
        job.finish(record, {})
        times[runtime] = t.seconds
        memory[runtime] = {"rss_mb_after": round(rss_mb()), "peak_rss_mb_so_far": round(peak_rss_mb())}
        del seg.segment_everything
        coco = json.loads((root / f"out-{runtime}" / "annotations.json").read_text())
        labels[runtime] = [(a["image_id"], a["category_id"], json.dumps(a["segmentation"], sort_keys=True))
                           for a in coco["annotations"]]
    same = len(set(labels["torch"]) & set(labels["onnx"]))
    out = {"photos": photos, "grid": grid, "torch_s": round(times["torch"], 2), "onnx_s": round(times["onnx"], 2),
           "onnx_vs_torch": round(times["torch"] / times["onnx"], 2), "annotations": len(labels["torch"]),
           "identical_annotations": same, "stage_seconds": stages, "memory": memory}
    if "onnx-fast" in times:
        out.update({"onnx_fast_s": round(times["onnx-fast"], 2),
                    "onnx_fast_vs_torch": round(times["torch"] / times["onnx-fast"], 2),
                    "fast_annotations": len(labels["onnx-fast"]),
                    "fast_identical_annotations": len(set(labels["torch"]) & set(labels["onnx-fast"]))})
    return out


def _summing_stages(seg) -> dict:
    """Seconds per stage (``last_stats``) summed over the job's images: *seg*'s ``segment_everything`` wrapped on
    the instance until the caller deletes the wrapper."""
    total: dict = {}
    inner = seg.segment_everything

    def wrapped(*args, **kwargs):
        out = inner(*args, **kwargs)
        for stage, seconds in seg.last_stats.get("seconds", {}).items():
            total[stage] = round(total.get(stage, 0.0) + seconds, 2)
        return out

    seg.segment_everything = wrapped
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", default="16,32")
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--label-grid", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each path at each grid (best time kept)")
    ap.add_argument("--skip", default="", help="comma-separated: parts, arena, clip, rounding, everything, query, "
                    "label")
    ap.add_argument("--fast", action="store_true", help='also speed="fast" on ONNX Runtime (int8 CLIP image tower) '
                    "in the label job, and its labels region for region against the exact ONNX path")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("CLIPSAM_HOME", tempfile.mkdtemp())
    sam, kind = sam_model("vit_b")
    clip = clip_model("ViT-B-16/openai")
    keep_all = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0} \
        if kind == "random" else {}
    image = photo(long_side=1024)
    segs = _segmenters(sam, clip, args.fast)
    exact = {k: v for k, v in segs.items() if k in ("torch", "onnx")}
    rows: dict = {"everything": [], "query": [], "label": []}
    skip = set(filter(None, args.skip.split(",")))
    if "parts" not in skip:
        rows["parts"] = [_parts(sam, clip)]
    if "arena" not in skip:
        rows["arena"] = [_arena(sam)]
        print(json.dumps({"arena": rows["arena"][-1]}), flush=True)
    if "clip" not in skip:
        rows["clip_batches"] = [_clip_batches(clip)]
    if "rounding" not in skip:
        rows["rounding"] = [_rounding(sam, image)]
        print(json.dumps(rows["rounding"][-1]), flush=True)
    for grid in map(int, args.grids.split(",")) if "everything" not in skip else ():
        rows["everything"].append(_everything(exact, sam, image, grid, keep_all, args.repeat))
        print(json.dumps(rows["everything"][-1]), flush=True)
    if "query" not in skip:
        rows["query"].append(_query(exact, image, args.label_grid, keep_all))
        print(json.dumps(rows["query"][-1]), flush=True)
    if "label" not in skip:
        rows["label"].append(_label(segs, args.photos, args.label_grid, keep_all))
        print(json.dumps(rows["label"][-1]), flush=True)
    if args.fast:
        rows["fast_labels"] = [_fast_labels(sam, clip, image, 8, keep_all)]
        print(json.dumps(rows["fast_labels"][-1]), flush=True)
    import onnxruntime

    result = {"machine": machine(), "onnxruntime": onnxruntime.__version__, "weights": kind,
              "image_hw": list(image.shape[:2]), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "rss_mb": round(rss_mb()), "peak_rss_mb": round(peak_rss_mb()), **rows}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
