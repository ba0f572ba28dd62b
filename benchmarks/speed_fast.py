"""Issue 14 part 4 — approximate speed on CPU: which option buys the most time for the least mask change?

    python benchmarks/speed_fast.py                 # vit_b, a 1024-px photo and the synthetic scene at 1024 px
    python benchmarks/speed_fast.py --compile       # also torch.compile of the image encoder (slow to compile)

Every option runs against the exact path in the same process, same weights (real when cached, else random: every
mask kept), same image: embedding + clipsam's generator. Agreement: for each exact mask, the best IoU among the
option's masks ("mean IoU of matched masks"), and the share of exact masks matched at IoU >= 0.9. Options:

* ``int8-encoder``: dynamic int8 quantisation of the image encoder's ``nn.Linear`` layers (weights int8, activations
  quantised on the fly; ``torch.ao.quantization.quantize_dynamic``);
* ``int8-all``: the same for the whole model (mask decoder included);
* ``half-grid``: half the points per side (a quarter of the decoder prompts), exact model;
* ``fast``: what ``Segmenter(speed="fast")`` does on a CPU: ``int8-encoder`` and ``half-grid`` together;
* ``bf16``: CPU autocast to bfloat16, only where the CPU has native bf16 (AVX512-BF16 / AMX; else skipped);
* ``compile`` (``--compile``): ``torch.compile`` of the image encoder (steady-state time; first call reported apart).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, machine, photo, sam_model  # noqa: E402


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _scene_image(side: int) -> np.ndarray:
    from clipsam.testing import synthetic_scene

    return synthetic_scene(height=round(side * 0.6), width=side).image


def _agreement(exact: list, approx: list) -> tuple[float, float]:
    from _common import best_ious

    if not exact:
        return float("nan"), float("nan")
    best = best_ious(exact, approx)
    return float(best.mean()), float((best >= 0.9).mean())


def _run(model: torch.nn.Module, image: np.ndarray, params: dict, bf16: bool = False) -> tuple[list, float, float]:
    from clipsam.models.sam import SamProposer

    proposer = SamProposer(model, "cpu")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with Timer() as t_embed:
            emb = proposer.embed(image)
        with Timer() as t_gen:
            masks = proposer.generate(image, emb, **params)
    return [p.rle for p in masks], t_embed.seconds, t_gen.seconds


def _quantised(model: torch.nn.Module, whole: bool) -> torch.nn.Module:
    q = copy.deepcopy(model)
    if whole:
        return torch.ao.quantization.quantize_dynamic(q, {torch.nn.Linear}, dtype=torch.qint8)
    q.image_encoder = torch.ao.quantization.quantize_dynamic(q.image_encoder, {torch.nn.Linear}, dtype=torch.qint8)
    return q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam", default="vit_b")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--options", default="int8-encoder,int8-all,half-grid,fast,bf16",
                    help="comma-separated options to run (bf16 only where the CPU has it)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, kind = sam_model(args.sam)
    keep_all = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    params = {"points_per_side": args.points_per_side, **(keep_all if kind == "random" else {})}
    half = {**params, "points_per_side": max(1, args.points_per_side // 2)}
    rows = []
    for name, image in (("photo", photo(long_side=1024)), ("synthetic scene", _scene_image(1024))):
        exact, e_embed, e_gen = _run(model, image, params)
        base = {"image": name, "image_hw": list(image.shape[:2]), "weights": kind, "masks_exact": len(exact),
                "exact_embed_s": round(e_embed, 2), "exact_generate_s": round(e_gen, 2)}
        wanted = args.options.split(",")
        options = [("int8-encoder", lambda: _quantised(model, False), params, False),
                   ("int8-all", lambda: _quantised(model, True), params, False),
                   ("half-grid", lambda: model, half, False), ("fast", lambda: _quantised(model, False), half, False)]
        if _cpu_has_bf16():
            options.append(("bf16", lambda: model, params, True))
        for opt, make, p, bf16 in options:
            if opt not in wanted:
                continue
            m = make()
            masks, o_embed, o_gen = _run(m, image, p, bf16)
            miou, share = _agreement(exact, masks)
            rows.append({**base, "option": opt, "masks": len(masks), "embed_s": round(o_embed, 2),
                         "generate_s": round(o_gen, 2),
                         "speedup_total": round((e_embed + e_gen) / (o_embed + o_gen), 2),
                         "speedup_embed": round(e_embed / o_embed, 2), "mean_matched_iou": round(miou, 4),
                         "matched_at_0.9": round(share, 4)})
            print(json.dumps(rows[-1]), flush=True)
        if args.compile:
            compiled = copy.deepcopy(model)
            compiled.image_encoder = torch.compile(compiled.image_encoder)
            t0 = time.perf_counter()
            _run(compiled, image, params)
            first = time.perf_counter() - t0
            masks, o_embed, o_gen = _run(compiled, image, params)
            miou, share = _agreement(exact, masks)
            rows.append({**base, "option": "compile", "masks": len(masks), "embed_s": round(o_embed, 2),
                         "generate_s": round(o_gen, 2), "first_call_s": round(first, 1),
                         "speedup_total": round((e_embed + e_gen) / (o_embed + o_gen), 2),
                         "speedup_embed": round(e_embed / o_embed, 2), "mean_matched_iou": round(miou, 4),
                         "matched_at_0.9": round(share, 4)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine(), "cpu_bf16": _cpu_has_bf16(), "points_per_side": args.points_per_side,
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "runs": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
