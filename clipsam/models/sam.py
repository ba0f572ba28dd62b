"""Segment Anything (``segment_anything``) behind the :class:`~clipsam.models.base.MaskProposer` interface."""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam

from ..errors import PromptError
from . import amg as fast_amg
from .base import PromptMasks, Proposal, check_mask_input, locked, proposals_from_records, work_to_image

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
    which are padded (see :func:`pad_for_sam`). ``work_size`` is the processing size the pipeline works at: prompts
    come in its pixels and masks go out at its size, while :meth:`SamProposer.upscale` gives them at
    ``image_size`` from SAM's logits, as stock SAM does.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: tuple[int, int] | None = None
    work_size: tuple[int, int] | None = None

    @property
    def padded(self) -> bool:
        return self.image_size is not None and tuple(self.image_size) != tuple(self.original_size)

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.image_size or self.original_size)  # type: ignore[return-value]

    @property
    def work_hw(self) -> tuple[int, int]:
        return tuple(self.work_size or self.image_hw)  # type: ignore[return-value]

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """``(..., 2)`` (x, y) work-size pixels in the caller's image's pixels."""
        return work_to_image(xy, self.image_hw, self.work_hw)


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

    Embed the original image with a smaller ``work_size`` and the proposer works at that size (prompts in its
    pixels, masks at its size, for the pipeline's cheap stages), while :meth:`upscale` and the generator's
    ``full_rle`` give the same masks at the original resolution from SAM's logits, exactly as stock SAM does.
    """

    #: the backend it is (:mod:`clipsam.models.backends`)
    backend = "sam"
    #: what runs its image encoder and mask decoder: ``torch`` or ``onnx`` (:mod:`clipsam.models.onnx`)
    runtime = "torch"

    #: embeds the original image and gives full-resolution masks from its logits (see :meth:`upscale`)
    full_resolution = True
    #: full-resolution float logits held at once (pixels x masks)
    chunk_pixels = fast_amg.DEFAULT_CHUNK_PIXELS

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
        self._lock = threading.RLock()  # one predictor serves every call: threads take turns (see base.locked)

    def _autocast(self) -> Any:
        """bf16 autocast on CUDA when asked for (faster on tensor cores; masks then differ slightly from fp32)."""
        enabled = self.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """Shape ``(h, w)`` of the low-resolution logits accepted as ``mask_input``."""
        h, w = self.model.prompt_encoder.mask_input_size
        return int(h), int(w)

    @locked
    @torch.inference_mode()
    def embed(self, image: np.ndarray, work_size: tuple[int, int] | None = None) -> SamEmbedding:
        """SAM's embedding of *image* (stock ``SamPredictor.set_image``); *work_size*: the processing size the
        pipeline gives prompts in and takes masks at (default: the image's size)."""
        padded = pad_for_sam(image, self.model.image_encoder.img_size)
        with self._autocast():
            self._predictor.set_image(padded)
        p = self._predictor
        size = tuple(image.shape[:2])
        emb = SamEmbedding(p.features, tuple(p.original_size), tuple(p.input_size), size,
                           None if work_size is None or tuple(work_size) == size else tuple(work_size))
        p.reset_image()
        return emb

    @locked
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
        frame: str = "work",
    ) -> PromptMasks:
        """Masks at the work size for prompts in work-size pixels (``frame="image"``: in the original image's
        pixels, exactly as stock ``SamPredictor.predict`` takes them)."""
        if mask_input is not None:
            mask_input = check_mask_input(mask_input, self.mask_input_size)
        if frame not in ("work", "image"):
            raise ValueError(f"frame must be 'work' or 'image', got {frame!r}")
        if frame == "work":
            point_coords = None if point_coords is None else embedding.to_image(point_coords)
            box = None if box is None else embedding.to_image(np.asarray(box, dtype=np.float64).reshape(2, 2))
        _restore(self._predictor, embedding)
        try:
            with self._autocast():
                low, iou = self._decode(point_coords, point_labels, box, mask_input, multimask_output)
                masks = self._masks_at(low, embedding, embedding.work_hw)
        finally:
            self._predictor.reset_image()
        iou_np = iou.float().cpu().numpy()
        order = np.argsort(-iou_np, kind="stable")
        return PromptMasks(masks[order], iou_np[order].astype(np.float32),
                           low.float().cpu().numpy()[order].astype(np.float32))

    def _decode(self, point_coords: np.ndarray | None, point_labels: np.ndarray | None, box: np.ndarray | None,
                mask_input: np.ndarray | None, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's low-resolution logits and predicted IoUs for one prompt: ``SamPredictor.predict`` up to (not
        including) its upsampling, step for step."""
        p = self._predictor
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_labels must be given with point_coords")
            pts = p.transform.apply_coords(np.asarray(point_coords), p.original_size)
            coords = torch.as_tensor(pts, dtype=torch.float, device=p.device)[None, :, :]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=p.device)[None, :]
        if box is not None:
            b = p.transform.apply_boxes(np.asarray(box).reshape(-1, 4), p.original_size)
            boxes = torch.as_tensor(b, dtype=torch.float, device=p.device)[None, :]
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=p.device)[None, :, :, :]
        sparse, dense = self.model.prompt_encoder(points=(coords, labels) if coords is not None else None,
                                                  boxes=boxes, masks=masks)
        pe = self.model.prompt_encoder.get_dense_pe()
        low, iou = self.model.mask_decoder(image_embeddings=p.features, image_pe=pe,
                                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                           multimask_output=multimask_output)
        return low[0], iou[0]

    def _masks_at(self, low: torch.Tensor, emb: SamEmbedding, size: tuple[int, int]) -> np.ndarray:
        """``(N, *size) bool`` masks from ``(N, h, w)`` low-resolution logits: SAM's bilinear upsampling straight
        to *size* (the caller's image or the work size), cut out of the padding of strips."""
        thr = self.model.mask_threshold
        if tuple(size) == emb.image_hw:
            return np.stack([m for m in self._image_masks(low, emb)]) if len(low) else \
                np.zeros((0, *size), dtype=bool)
        if not emb.padded:
            return (self.model.postprocess_masks(low[:, None], emb.input_size, tuple(size))[:, 0] > thr).cpu().numpy()
        index = fast_amg._nearest_index(emb.image_hw, size, low.device)  # a strip: via the (small) image size
        return np.stack([m[index[0]][:, index[1]].cpu().numpy() for m in self._image_masks(low, emb, as_numpy=False)])

    def _image_masks(self, low: torch.Tensor, emb: SamEmbedding, as_numpy: bool = True) -> Any:
        """Masks at the caller's image size from low-resolution logits, a few at a time (bounded memory)."""
        h, w = emb.original_size
        ih, iw = emb.image_hw
        per = max(1, self.chunk_pixels // (h * w))
        for start in range(0, len(low), per):
            logits = self.model.postprocess_masks(low[start:start + per, None], emb.input_size, emb.original_size)
            for m in (logits[:, 0, :ih, :iw] > self.model.mask_threshold):
                yield m.cpu().numpy() if as_numpy else m

    @locked
    @torch.inference_mode()
    def upscale(self, embedding: SamEmbedding, low_res_logits: np.ndarray) -> list[dict[str, Any]]:
        """The masks of ``(N, h, w)`` low-resolution logits (from :meth:`predict`) at the original image's size,
        as COCO RLE: the logits upsampled bilinearly and thresholded there, as stock SAM does, a few at a time."""
        low = torch.as_tensor(np.asarray(low_res_logits, dtype=np.float32), device=self.device)
        if low.ndim == 2:
            low = low[None]
        out: list[dict[str, Any]] = []
        for m in self._image_masks(low, embedding, as_numpy=False):
            out.append(fast_amg._plain(fast_amg._encode(m[None])[0]))
        return out

    @locked
    def generate(self, image: np.ndarray, embedding: SamEmbedding | None = None, **params: Any) -> list[Proposal]:
        """Every mask of *image* (the one embedded); with a work size each :class:`Proposal` has the mask at that
        size as ``rle`` and at the image's as ``full_rle`` (stock's mask)."""
        unknown = sorted(set(params) - set(GENERATOR_PARAMS))
        if unknown:
            raise PromptError(f"unknown generator parameter(s) {unknown}; valid: {', '.join(GENERATOR_PARAMS)}")
        try:
            generator = SamAutomaticMaskGenerator(self.model, output_mode="coco_rle", **params)
        except (AssertionError, ValueError) as exc:
            raise PromptError(f"invalid generator parameters {params}: {exc or 'rejected by SAM'}") from exc
        emb = embedding if embedding is not None else self.embed(image)
        if emb.image_hw != tuple(image.shape[:2]):
            raise PromptError(f"embedding is for a {emb.image_hw} image, not {image.shape[:2]}")
        if self.fast and fast_amg.supports(params):
            with self._autocast():
                proposals = fast_amg.generate(self.model, emb.features, emb.original_size, emb.input_size,
                                              chunk_pixels=self.chunk_pixels, image_size=emb.image_hw,
                                              work_size=emb.work_size, **params)
            log.debug("SAM generated %d masks (fast path)", len(proposals))
            return proposals
        generator.predictor = _ReusingPredictor(self.model, emb)
        with torch.inference_mode(), self._autocast():
            records = generator.generate(pad_for_sam(image, self.model.image_encoder.img_size))
        log.debug("SAM generated %d masks", len(records))
        proposals = proposals_from_records(records)
        proposals = _crop_proposals(proposals, emb.image_hw) if emb.padded else proposals
        if emb.work_size is None:
            return proposals
        from ..core import masks as M

        return [Proposal(M.resize(p.rle, emb.work_size), p.predicted_iou, p.stability_score, p.point_xy, p.rle)
                for p in proposals]
