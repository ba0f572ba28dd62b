"""A faster automatic mask generator for SAM 2.1 that returns exactly the masks of ``SAM2AutomaticMaskGenerator``.

What :mod:`clipsam.models.amg` does for SAM 1, for the ``sam2`` package's generator: the same point grid, batches,
decoder calls, upsampling, thresholds and NMS -- RLEs, predicted IoUs, stability scores and their order identical to
stock (the unit tests check this on several parameter sets) -- with the work around them cut:

* on a CPU the decoder takes each batch :data:`~clipsam.models.amg.CPU_DECODER_PROMPTS` prompts a call;
* masks failing ``pred_iou_thresh`` are dropped before they are upsampled (stock upsamples the whole batch, three
  full-resolution float masks per point);
* full-resolution logits exist for a few masks at a time (``chunk_pixels``), never for a whole batch;
* RLEs and boxes come from pycocotools' C code (stock: a torch RLE routine, then a Python conversion per mask);
* with a smaller ``work_size``, each mask is also given there (nearest neighbour of the full mask).

For the single-crop setting without ``use_m2m`` and ``min_mask_region_area`` (SAM 2.1's defaults); other settings run
the stock generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import amg
from .base import Proposal

#: ``SAM2AutomaticMaskGenerator``'s defaults.
STOCK_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.8, "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0, "mask_threshold": 0.0, "box_nms_thresh": 0.7, "crop_n_layers": 0,
    "crop_nms_thresh": 0.7, "crop_overlap_ratio": 512 / 1500, "crop_n_points_downscale_factor": 1,
    "point_grids": None, "min_mask_region_area": 0, "use_m2m": False, "multimask_output": True,
}


def supports(params: dict[str, Any]) -> bool:
    """True when the fast path gives stock's exact output for these generator parameters."""
    return (int(params.get("crop_n_layers", 0)) == 0 and int(params.get("min_mask_region_area", 0)) == 0
            and not params.get("use_m2m", False))


def decode(predictor: Any, coords: torch.Tensor | None, labels: torch.Tensor | None, boxes: torch.Tensor | None,
           mask_input: torch.Tensor | None, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution logits (not clamped) and predicted IoUs: ``SAM2ImagePredictor._predict`` up to, not
    including, its upsampling, step for step (prompts already transformed, as ``_predict`` takes them)."""
    model = predictor.model
    points = (coords, labels) if coords is not None else None
    if boxes is not None:
        box_coords = boxes.reshape(-1, 2, 2)
        box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(boxes.size(0), 1)
        points = (torch.cat([box_coords, points[0]], dim=1), torch.cat([box_labels, points[1]], dim=1)) \
            if points is not None else (box_coords, box_labels)
    sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
    batched = points is not None and points[0].shape[0] > 1
    feats = predictor._features
    high_res = [level[-1].unsqueeze(0) for level in feats["high_res_feats"]]
    low, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=feats["image_embed"][-1].unsqueeze(0), image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
        repeat_image=batched, high_res_features=high_res)
    return low, iou


def _decode_batch(predictor: Any, coords: torch.Tensor, labels: torch.Tensor, multimask_output: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode` on one generator batch of point prompts, :data:`~clipsam.models.amg.CPU_DECODER_PROMPTS`
    prompts a call on a CPU (SAM 2.1's decoder, like SAM 1's, copies the image embedding -- and here its high-
    resolution features -- once per prompt)."""
    return amg.decode_in_calls(lambda a, b: decode(predictor, coords[a:b], labels[a:b], None, None,
                                                   multimask_output), len(coords), predictor.device)


@torch.inference_mode()
def generate(predictor: Any, original_size: tuple[int, int], *, chunk_pixels: int = amg.DEFAULT_CHUNK_PIXELS,
             work_size: tuple[int, int] | None = None, **params: Any) -> list[Proposal]:
    """All masks of the image set on *predictor* (a ``SAM2ImagePredictor`` holding its features), in stock
    ``SAM2AutomaticMaskGenerator`` order; *work_size* as in :func:`clipsam.models.amg.generate`."""
    from sam2.utils.amg import batch_iterator, build_all_layer_point_grids, calculate_stability_score

    p = {**STOCK_DEFAULTS, **params}
    if not supports(p):
        raise ValueError("the fast SAM 2.1 generator handles crop_n_layers=0, min_mask_region_area=0, use_m2m=False")
    if (p["points_per_side"] is None) == (p["point_grids"] is None):
        raise ValueError("exactly one of points_per_side or point_grids must be given")
    grid = (build_all_layer_point_grids(p["points_per_side"], 0, 1)[0] if p["point_grids"] is None
            else np.asarray(p["point_grids"][0]))
    h, w = original_size
    device = predictor.device
    transforms = predictor._transforms
    per_chunk = max(1, chunk_pixels // (h * w))
    threshold = p["mask_threshold"]
    small = None if work_size is None or tuple(work_size) == (h, w) else amg._nearest_index((h, w), work_size, device)
    points_for_image = grid * np.array(original_size)[None, ::-1]

    rles: list[Any] = []
    iou_all, stab_all, box_all, pts_all = [], [], [], []
    for (points,) in batch_iterator(p["points_per_batch"], points_for_image):
        pts = torch.as_tensor(points, dtype=torch.float32, device=device)
        in_points = transforms.transform_coords(pts, normalize=True, orig_hw=original_size)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=device)
        low, iou = _decode_batch(predictor, in_points[:, None, :], in_labels[:, None], p["multimask_output"])
        per_point = low.shape[1]
        low, iou = low.flatten(0, 1), iou.flatten(0, 1)
        pts = pts.repeat_interleave(per_point, dim=0)
        if p["pred_iou_thresh"] > 0.0:  # before upsampling: the filter only reads the predicted IoU
            keep = iou > p["pred_iou_thresh"]
            low, iou, pts = low[keep], iou[keep], pts[keep]
        for start in range(0, low.shape[0], per_chunk):
            logits = transforms.postprocess_masks(low[start:start + per_chunk, None], original_size)[:, 0]
            stab = calculate_stability_score(logits, threshold, p["stability_score_offset"])
            chunk_iou, chunk_pts = iou[start:start + per_chunk], pts[start:start + per_chunk]
            masks = logits > threshold
            del logits
            if p["stability_score_thresh"] > 0.0:
                keep = stab >= p["stability_score_thresh"]
                masks, stab, chunk_iou, chunk_pts = masks[keep], stab[keep], chunk_iou[keep], chunk_pts[keep]
            if masks.shape[0] == 0:
                continue
            encoded = amg._encode(masks)
            box_all.append(amg.stock_boxes(encoded))
            rles.extend(amg._cut(masks, encoded, (h, w), small) if small is not None else encoded)
            iou_all.append(chunk_iou.float().cpu())
            stab_all.append(stab.float().cpu())
            pts_all.append(chunk_pts.cpu().numpy())
    return amg.nms_proposals(rles, iou_all, stab_all, box_all, pts_all, p["box_nms_thresh"])
