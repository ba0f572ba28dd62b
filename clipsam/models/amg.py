"""A faster automatic mask generator that returns exactly the masks of ``SamAutomaticMaskGenerator``.

Same point grid, same batches, same decoder, same upsampling, same thresholds, same NMS: the RLEs, predicted IoUs,
stability scores and their order are identical to stock (the unit tests check this). What changes is the work
around them:

* on a CPU the decoder takes each batch :data:`CPU_DECODER_PROMPTS` prompts a call, from cache rather than memory;
* masks failing ``pred_iou_thresh`` are dropped *before* being upsampled to full resolution (stock upsamples every
  mask of a batch first);
* full-resolution logits exist for a few masks at a time (``chunk_pixels``), never for a whole batch, which bounds
  peak memory at high resolution;
* RLE encoding and boxes come from pycocotools' C code instead of a Python loop over run lengths, and no
  uncompressed RLE lists are deep-copied between batches;
* given a smaller ``work_size`` (clipsam's processing size), each mask is also returned there, taken nearest
  neighbour from the full-resolution mask (``Proposal.rle``; the stock mask is ``Proposal.full_rle``).

Used for the default single-crop setting (``crop_n_layers=0``, ``min_mask_region_area=0``); other settings run the
stock generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from segment_anything.modeling import Sam
from segment_anything.utils.amg import batch_iterator, build_all_layer_point_grids, calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F
from torchvision.ops.boxes import batched_nms

from ..core.boxes import xywh_to_xyxy_inclusive
from .base import Proposal

#: Full-resolution float logits held at once (pixels x masks): 64 Mpx = 256 MB.
DEFAULT_CHUNK_PIXELS = 64_000_000

#: Prompts per mask-decoder call on a CPU (on other devices a generator batch goes at once). SAM's decoder copies the
#: image embedding for every prompt and streams the copies through its two-way transformer: stock's 64 prompts make
#: 268-MB tensors for ViT-B, which run from memory; 8 make 34-MB ones, which run from cache. Measured on a 2-core x86
#: CPU, one batch of 64 took 6.28 s in PyTorch and 3.37 s in ONNX Runtime at once, 3.54 s and 2.94 s eight at a time,
#: with bit-identical logits (benchmarks/RESULTS.md, issue 25).
CPU_DECODER_PROMPTS = 8

#: Settings the fast path reproduces exactly; anything else goes to the stock generator.
STOCK_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0, "box_nms_thresh": 0.7, "crop_n_layers": 0, "crop_nms_thresh": 0.7,
    "crop_overlap_ratio": 512 / 1500, "crop_n_points_downscale_factor": 1, "point_grids": None,
    "min_mask_region_area": 0,
}


def supports(params: dict[str, Any]) -> bool:
    """True when the fast path gives stock's exact output for these generator parameters."""
    return int(params.get("crop_n_layers", 0)) == 0 and int(params.get("min_mask_region_area", 0)) == 0


def _encode(masks: torch.Tensor) -> list[dict[str, Any]]:
    """RLE of a ``(k, H, W) bool`` stack via pycocotools (column-major, as COCO and SAM's stock RLE)."""
    fortran = masks.transpose(1, 2).contiguous().cpu().numpy().view(np.uint8).T  # (H, W, k), Fortran order
    return coco_mask.encode(fortran)


@torch.inference_mode()
def generate(
    model: Sam,
    features: torch.Tensor,
    original_size: tuple[int, int],
    input_size: tuple[int, int],
    *,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
    image_size: tuple[int, int] | None = None,
    work_size: tuple[int, int] | None = None,
    **params: Any,
) -> list[Proposal]:
    """All masks of the image whose embedding is *features*, in stock ``SamAutomaticMaskGenerator`` order.

    Args:
        original_size: the size SAM saw (the image, padded for extreme strips).
        image_size: the caller's image inside it (masks are cut to it and dropped when nothing is left).
        work_size: also give each mask at this smaller size (nearest neighbour of the full mask) as ``rle``, the
            full mask as ``full_rle``; ``None``: ``rle`` is the full mask.
    """
    p = {**STOCK_DEFAULTS, **params}
    if not supports(p):
        raise ValueError("the fast generator handles crop_n_layers=0 and min_mask_region_area=0 only")
    if (p["points_per_side"] is None) == (p["point_grids"] is None):
        raise ValueError("exactly one of points_per_side or point_grids must be given")
    grid = (build_all_layer_point_grids(p["points_per_side"], 0, 1)[0] if p["point_grids"] is None
            else np.asarray(p["point_grids"][0]))
    h, w = original_size
    device = features.device
    transform = ResizeLongestSide(model.image_encoder.img_size)
    points_for_image = grid * np.array(original_size)[None, ::-1]
    per_chunk = max(1, chunk_pixels // (h * w))
    threshold = model.mask_threshold
    ih, iw = image_size or original_size
    small = None if work_size is None or tuple(work_size) == (ih, iw) else _nearest_index((ih, iw), work_size, device)

    rles: list[dict[str, Any]] = []
    iou_all, stab_all, box_all, pts_all = [], [], [], []
    for (points,) in batch_iterator(p["points_per_batch"], points_for_image):
        coords = torch.as_tensor(transform.apply_coords(points, original_size), device=device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=device)
        sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        low_res, iou = _decode(model, features, sparse, dense)
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
        pts = np.repeat(points, 3, axis=0)
        if p["pred_iou_thresh"] > 0.0:  # before upsampling: the filter only reads the predicted IoU
            keep = (iou > p["pred_iou_thresh"]).cpu().numpy()
            keep_t = torch.from_numpy(keep).to(device)
            low_res, iou, pts = low_res[keep_t], iou[keep_t], pts[keep]
        for start in range(0, low_res.shape[0], per_chunk):
            logits = postprocess_masks(low_res[start:start + per_chunk, None], model.image_encoder.img_size,
                                       input_size, original_size)[:, 0]
            stab = calculate_stability_score(logits, threshold, p["stability_score_offset"])
            keep = stab >= p["stability_score_thresh"] if p["stability_score_thresh"] > 0.0 else None
            masks = logits > threshold
            del logits
            chunk_iou = iou[start:start + per_chunk]
            chunk_pts = pts[start:start + per_chunk]
            if keep is not None:
                masks, stab, chunk_iou = masks[keep], stab[keep], chunk_iou[keep]
                chunk_pts = chunk_pts[keep.cpu().numpy()]
            if masks.shape[0] == 0:
                continue
            encoded = _encode(masks)
            box_all.append(stock_boxes(encoded))
            if (ih, iw) != (h, w) or small is not None:
                encoded = _cut(masks, encoded, (ih, iw), small)
            rles.extend(encoded)
            iou_all.append(chunk_iou.float().cpu())
            stab_all.append(stab.float().cpu())
            pts_all.append(chunk_pts)
    return nms_proposals(rles, iou_all, stab_all, box_all, pts_all, p["box_nms_thresh"])


def _decode(model: Sam, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask decoder on one generator batch (multimask), :data:`CPU_DECODER_PROMPTS` prompts a call on a CPU."""
    pe = model.prompt_encoder.get_dense_pe()
    return decode_in_calls(lambda a, b: model.mask_decoder(
        image_embeddings=features, image_pe=pe, sparse_prompt_embeddings=sparse[a:b],
        dense_prompt_embeddings=dense[a:b], multimask_output=True), len(sparse), features.device)


def postprocess_masks(masks: torch.Tensor, img_size: int, input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> torch.Tensor:
    """Stock ``Sam.postprocess_masks``, bit for bit, without its work on pixels it throws away: of the upsampling to
    ``img_size`` squared only the rows and columns that survive the crop to *input_size* are computed (from the
    low-res rows and columns they read, at the same scale), and the last resize is skipped where *original_size* is
    *input_size* (bilinear at scale 1 copies). A 1024-px photo's masks: 1024 x 683 of 1024 x 1024 upsampled once,
    not upsampled and then resized to the same size."""
    low = masks.shape[-2:]
    keep = []
    for n, need in zip(low, input_size, strict=True):
        ratio = img_size // n
        exact = img_size % n == 0 and ratio & (ratio - 1) == 0  # a power of two: the scale stays exact in float
        keep.append(min(n, -(-need // ratio) + 2) if exact else n)  # a kept row reads low rows <= need / ratio + 1
    size = tuple(k * (img_size // n) if k < n else img_size for k, n in zip(keep, low, strict=True))
    out = F.interpolate(masks[..., :keep[0], :keep[1]], size, mode="bilinear", align_corners=False)
    out = out[..., :input_size[0], :input_size[1]]
    if tuple(original_size) == tuple(out.shape[-2:]):
        return out
    return F.interpolate(out, original_size, mode="bilinear", align_corners=False)


def decode_in_calls(call: Any, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``call(start, stop) -> (low-res logits, IoUs)`` for prompts ``start:stop`` of a batch of *n*, made
    :data:`CPU_DECODER_PROMPTS` prompts a call on a CPU (the whole batch at once elsewhere), results concatenated."""
    step = CPU_DECODER_PROMPTS if device.type == "cpu" else n
    parts = [call(k, k + step) for k in range(0, n, step)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([low for low, _ in parts]), torch.cat([iou for _, iou in parts])


def stock_boxes(encoded: list[dict[str, Any]]) -> torch.Tensor:
    """Stock SAM's boxes of RLE-encoded masks: ``(k, 4) int64`` inclusive x0, y0, x1, y1; zeros for an empty mask."""
    xyxy = xywh_to_xyxy_inclusive(coco_mask.toBbox(encoded).reshape(-1, 4))
    return torch.as_tensor(xyxy.astype(np.int64))


def nms_proposals(rles: list[Any], iou_all: list[torch.Tensor], stab_all: list[torch.Tensor],
                  box_all: list[torch.Tensor], pts_all: list[np.ndarray], nms_thresh: float) -> list[Proposal]:
    """The generators' last step, as stock: box NMS by predicted IoU over every kept mask, then the proposals in
    NMS order. *rles* items are RLEs or ``(rle, full_rle)`` pairs from :func:`_cut` (``rle`` ``None``: the mask lies
    wholly in a strip's padding)."""
    if not rles:
        return []
    iou_t, stab_t, boxes = torch.cat(iou_all), torch.cat(stab_all), torch.cat(box_all)
    order = batched_nms(boxes.float(), iou_t, torch.zeros(len(boxes)), iou_threshold=nms_thresh)
    points_np = np.concatenate(pts_all)
    out = []
    for i in order.tolist():
        rle, full = rles[i] if isinstance(rles[i], tuple) else (rles[i], None)
        if rle is None:  # nothing left inside the caller's image
            continue
        out.append(Proposal(rle=_plain(rle), predicted_iou=float(iou_t[i]), stability_score=float(stab_t[i]),
                            point_xy=(float(points_np[i][0]), float(points_np[i][1])),
                            full_rle=None if full is None else _plain(full)))
    return out


def _plain(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes)
            else counts}


def _nearest_index(src: tuple[int, int], dst: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Rows and columns of a *src*-sized mask that give it at *dst* by nearest neighbour (pixel centres, as
    :func:`clipsam.core.masks.resize`)."""
    rows = np.minimum(((np.arange(dst[0]) + 0.5) * src[0] / dst[0]).astype(np.int64), src[0] - 1)
    cols = np.minimum(((np.arange(dst[1]) + 0.5) * src[1] / dst[1]).astype(np.int64), src[1] - 1)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)


def _cut(masks: torch.Tensor, encoded: list[dict[str, Any]], image_hw: tuple[int, int],
         small: tuple[torch.Tensor, ...] | None) -> list[Any]:
    """Per mask ``(rle, full_rle)``: cut to the caller's *image_hw* (``(None, None)`` when nothing is left), and with
    *small* also at the work size. *encoded* are the uncut masks' RLEs."""
    h, w = image_hw
    if tuple(masks.shape[1:]) != (h, w):
        masks = masks[:, :h, :w]
        encoded = _encode(masks)
    nonempty = masks.flatten(1).any(1).cpu().numpy()
    if small is None:
        return [(f, None) if ok else (None, None) for f, ok in zip(encoded, nonempty, strict=True)]
    work = _encode(masks[:, small[0]][:, :, small[1]])
    return [(w_, f) if ok else (None, None) for w_, f, ok in zip(work, encoded, nonempty, strict=True)]
