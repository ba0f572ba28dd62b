"""Segment Anything (``segment_anything``) behind the :class:`~clipsam.models.base.MaskProposer` interface."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam

from ..errors import PromptError
from . import amg as fast_amg
from .base import PromptMasks, Proposal, proposals_from_records

log = logging.getLogger(__name__)

#: Parameters of ``SamAutomaticMaskGenerator`` that ``generate`` passes through.
GENERATOR_PARAMS = tuple(
    p for p in inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    if p not in ("self", "model", "output_mode")
)


@dataclass(frozen=True)
class SamEmbedding:
    """The image embedding of one image: computed once, reused for every prompt on that image.

    ``original_size`` is the size SAM saw; it exceeds ``image_size`` (the caller's image) only for extreme strips,
    which are padded (see :func:`pad_for_sam`).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: tuple[int, int] | None = None

    @property
    def padded(self) -> bool:
        return self.image_size is not None and tuple(self.image_size) != tuple(self.original_size)


def pad_for_sam(image: np.ndarray, target: int) -> np.ndarray:
    """*image* padded at the bottom / right (edge pixels repeated) so that SAM's resize of its long side to *target*
    keeps the short side at least one pixel; the image itself when it already does.

    SAM's ``ResizeLongestSide`` rounds ``short * target / long``; a 4059x10 strip at ``target`` 1024 is fine, but at
    a small ``target`` (or a 20000x3 strip) the short side rounds to 0 and every resize fails.
    """
    h, w = image.shape[:2]
    long_side = max(h, w)
    need = int(np.ceil(long_side / target))  # rounds to >= 1 pixel after the resize
    pad_h, pad_w = max(0, need - h), max(0, need - w)
    if not pad_h and not pad_w:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _crop_proposals(proposals: list[Proposal], size: tuple[int, int]) -> list[Proposal]:
    """Proposals made on a padded image, cut back to the caller's *size* (masks wholly in the padding dropped)."""
    from ..core import masks as M

    h, w = size
    out = []
    for p in proposals:
        mask = M.decode(p.rle)[:h, :w]
        if mask.any():
            out.append(Proposal(M.encode(mask), p.predicted_iou, p.stability_score, p.point_xy))  # type: ignore[arg-type]
    return out


class _ReusingPredictor(SamPredictor):
    """A predictor that serves a precomputed embedding instead of re-encoding the same image."""

    def __init__(self, model: Sam, embedding: SamEmbedding) -> None:
        super().__init__(model)
        self._embedding = embedding

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if tuple(image.shape[:2]) == tuple(self._embedding.original_size):
            _restore(self, self._embedding)
        else:  # a crop layer: encode it
            super().set_image(image, image_format)


def _restore(predictor: SamPredictor, emb: SamEmbedding) -> None:
    predictor.reset_image()
    predictor.features = emb.features
    predictor.original_size = emb.original_size
    predictor.input_size = emb.input_size
    predictor.is_image_set = True


class SamProposer:
    """A ``segment_anything`` :class:`Sam` model as a mask proposer.

    Args:
        model: a built SAM model (weights loaded).
        device: torch device to run on.
        name: registry name, for messages and provenance.
        fast: generate with :mod:`clipsam.models.amg` (stock-identical masks, less time and memory) when the
            parameters allow; ``False`` always runs the stock ``SamAutomaticMaskGenerator``.
        precision: ``fp32`` (default, identical to stock) or ``bf16`` (autocast on CUDA only).
    """

    def __init__(self, model: Sam, device: torch.device | str = "cpu", name: str = "sam", fast: bool = True,
                 precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.name = name
        self.fast = fast
        self.precision = precision
        self._predictor = SamPredictor(self.model)

    def _autocast(self) -> Any:
        """bf16 autocast on CUDA when asked for (faster on tensor cores; masks then differ slightly from fp32)."""
        enabled = self.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """Shape ``(h, w)`` of the low-resolution logits accepted as ``mask_input``."""
        h, w = self.model.prompt_encoder.mask_input_size
        return int(h), int(w)

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> SamEmbedding:
        padded = pad_for_sam(image, self.model.image_encoder.img_size)
        with self._autocast():
            self._predictor.set_image(padded)
        p = self._predictor
        emb = SamEmbedding(p.features, tuple(p.original_size), tuple(p.input_size), tuple(image.shape[:2]))
        p.reset_image()
        return emb

    @torch.inference_mode()
    def predict(
        self,
        embedding: SamEmbedding,
        *,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> PromptMasks:
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            if mask_input.ndim == 2:
                mask_input = mask_input[None]
            if tuple(mask_input.shape[-2:]) != self.mask_input_size:
                raise PromptError(
                    f"mask prompt must be the low-resolution logits of an earlier call, shape "
                    f"(1, {self.mask_input_size[0]}, {self.mask_input_size[1]}), got {tuple(mask_input.shape)}"
                )
        _restore(self._predictor, embedding)
        try:
            with self._autocast():
                masks, iou, low = self._predictor.predict(
                    point_coords=point_coords, point_labels=point_labels, box=box, mask_input=mask_input,
                    multimask_output=multimask_output,
                )
        finally:
            self._predictor.reset_image()
        order = np.argsort(-iou, kind="stable")
        masks = masks[order].astype(bool)
        if embedding.padded:
            masks = masks[:, : embedding.image_size[0], : embedding.image_size[1]]  # type: ignore[index]
        return PromptMasks(masks, iou[order].astype(np.float32), low[order].astype(np.float32))

    def generate(self, image: np.ndarray, embedding: SamEmbedding | None = None, **params: Any) -> list[Proposal]:
        unknown = sorted(set(params) - set(GENERATOR_PARAMS))
        if unknown:
            raise PromptError(f"unknown generator parameter(s) {unknown}; valid: {', '.join(GENERATOR_PARAMS)}")
        try:
            generator = SamAutomaticMaskGenerator(self.model, output_mode="coco_rle", **params)
        except (AssertionError, ValueError) as exc:
            raise PromptError(f"invalid generator parameters {params}: {exc or 'rejected by SAM'}") from exc
        emb = embedding if embedding is not None else self.embed(image)
        if tuple(emb.image_size or emb.original_size) != tuple(image.shape[:2]):
            raise PromptError(f"embedding is for a {emb.image_size or emb.original_size} image, not {image.shape[:2]}")
        if self.fast and fast_amg.supports(params):
            with self._autocast():
                proposals = fast_amg.generate(self.model, emb.features, emb.original_size, emb.input_size, **params)
            log.debug("SAM generated %d masks (fast path)", len(proposals))
        else:
            generator.predictor = _ReusingPredictor(self.model, emb)
            with torch.inference_mode(), self._autocast():
                records = generator.generate(pad_for_sam(image, self.model.image_encoder.img_size))
            log.debug("SAM generated %d masks", len(records))
            proposals = proposals_from_records(records)
        return _crop_proposals(proposals, tuple(image.shape[:2])) if emb.padded else proposals

