"""SAM 2.1 (the ``sam2`` package) behind the :class:`~clipsam.models.base.MaskProposer` interface.

Install the backend with ``SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sam2==1.1.0'`` (the optional CUDA
extension only speeds up mask post-processing on GPUs). Select it with ``--sam sam2.1_hiera_tiny`` (or ``_small``,
``_base_plus``, ``_large``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, PromptError
from .amg import DEFAULT_CHUNK_PIXELS
from .base import PromptMasks, Proposal, check_mask_input, locked, proposals_from_records, work_to_image

log = logging.getLogger(__name__)

#: Registry architecture key -> sam2 config file.
CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def _require_sam2() -> None:
    try:
        import sam2  # noqa: F401
    except ImportError as exc:
        raise ModelError("the SAM 2.1 backend needs the sam2 package: "
                         "SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sam2==1.1.0'") from exc


def build_sam2_model(arch: str, device: torch.device | str = "cpu", seed: int | None = None) -> Any:
    """The SAM 2.1 network for *arch* (``sam2.1_hiera_t`` …) with random weights (seeded) — load a state dict next."""
    _require_sam2()
    from sam2.build_sam import build_sam2

    if arch not in CONFIGS:
        raise ModelError(f"unknown SAM 2.1 architecture {arch!r}; known: {', '.join(CONFIGS)}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return build_sam2(CONFIGS[arch], ckpt_path=None, device=str(device), mode="eval")


@dataclass(frozen=True)
class Sam2Embedding:
    """SAM 2.1's features of one image; ``work_size``: the processing size prompts come in and masks go out at
    (``None``: the image's own), as for :class:`~clipsam.models.sam.SamEmbedding`."""

    features: dict[str, Any]
    original_size: tuple[int, int]
    work_size: tuple[int, int] | None = None

    @property
    def work_hw(self) -> tuple[int, int]:
        return tuple(self.work_size or self.original_size)  # type: ignore[return-value]

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        return work_to_image(xy, self.original_size, self.work_hw)


class Sam2Proposer:
    """A SAM 2.1 model as a mask proposer (prompted prediction and automatic generation).

    Like :class:`~clipsam.models.sam.SamProposer`: it embeds the original image, works at a smaller ``work_size``
    for the pipeline, gives full-resolution masks from its logits (:meth:`upscale`, ``Proposal.full_rle``) and
    generates with :mod:`clipsam.models.amg2` (stock-identical masks, less time and memory) when the parameters
    allow (``fast=False``: always ``SAM2AutomaticMaskGenerator``).
    """

    #: the backend it is (:mod:`clipsam.models.backends`)
    backend = "sam2"

    full_resolution = True
    chunk_pixels = DEFAULT_CHUNK_PIXELS  # as SAM 1: full-resolution float logits held at once

    def __init__(self, model: Any, device: torch.device | str = "cpu", name: str = "sam2", fast: bool = True) -> None:
        _require_sam2()
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.name = name
        self.fast = fast
        self._predictor = SAM2ImagePredictor(self.model)
        self._lock = threading.RLock()  # one predictor serves every call: threads take turns (see base.locked)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        size = self.model.sam_prompt_encoder.mask_input_size
        return int(size[0]), int(size[1])

    @locked
    @torch.inference_mode()
    def embed(self, image: np.ndarray, work_size: tuple[int, int] | None = None) -> Sam2Embedding:
        self._predictor.set_image(image)
        size = tuple(image.shape[:2])
        emb = Sam2Embedding(self._predictor._features, size,
                            None if work_size is None or tuple(work_size) == size else tuple(work_size))
        self._predictor.reset_predictor()
        return emb

    def _restore(self, predictor: Any, emb: Sam2Embedding) -> None:
        predictor.reset_predictor()
        predictor._features = emb.features
        predictor._orig_hw = [tuple(emb.original_size)]
        predictor._is_image_set = True
        predictor._is_batch = False

    @locked
    @torch.inference_mode()
    def predict(self, embedding: Sam2Embedding, *, point_coords: np.ndarray | None = None,
                point_labels: np.ndarray | None = None, box: np.ndarray | None = None,
                mask_input: np.ndarray | None = None, multimask_output: bool = True,
                frame: str = "work") -> PromptMasks:
        """Masks at the work size for prompts in work-size pixels (``frame="image"``: the original image's pixels,
        as stock ``SAM2ImagePredictor.predict`` takes them); ``low_res_logits`` clamped as stock's."""
        if mask_input is not None:
            mask_input = check_mask_input(mask_input, self.mask_input_size)
        if frame not in ("work", "image"):
            raise ValueError(f"frame must be 'work' or 'image', got {frame!r}")
        if frame == "work":
            point_coords = None if point_coords is None else embedding.to_image(point_coords)
            box = None if box is None else \
                embedding.to_image(np.asarray(box, dtype=np.float64).reshape(2, 2)).reshape(4)
        from . import amg2

        p = self._predictor
        self._restore(p, embedding)
        try:
            if point_coords is not None and point_labels is None:
                raise PromptError("point_labels must be given with point_coords")
            mask_t, coords, labels, boxes = p._prep_prompts(point_coords, point_labels, box, mask_input, True)
            low, iou = amg2.decode(p, coords, labels, boxes, mask_t, multimask_output)
            masks = self._masks_at(low[0], embedding.work_hw)
        finally:
            p.reset_predictor()
        iou_np = iou[0].float().cpu().numpy()
        order = np.argsort(-iou_np, kind="stable")
        raw = low[0].float().cpu().numpy()[order]
        return PromptMasks(masks[order], iou_np[order].astype(np.float32),
                           np.clip(raw, -32.0, 32.0).astype(np.float32), upscale_logits=raw.astype(np.float32))

    def _masks_at(self, low: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """``(N, *size) bool``: SAM 2.1's bilinear upsampling of ``(N, h, w)`` logits to *size*, a few at a time."""
        h, w = size
        per = max(1, self.chunk_pixels // (h * w))
        thr = self._predictor.mask_threshold
        out = [(self._predictor._transforms.postprocess_masks(low[k:k + per, None], tuple(size))[:, 0] > thr)
               .cpu().numpy() for k in range(0, len(low), per)]
        return np.concatenate(out) if out else np.zeros((0, h, w), dtype=bool)

    @locked
    @torch.inference_mode()
    def upscale(self, embedding: Sam2Embedding, low_res_logits: np.ndarray) -> list[dict[str, Any]]:
        """Masks of ``(N, h, w)`` logits (:attr:`PromptMasks.upscale_logits`) at the original size, as RLE."""
        from . import amg

        low = torch.as_tensor(np.asarray(low_res_logits, dtype=np.float32), device=self.device)
        low = low[None] if low.ndim == 2 else low
        h, w = embedding.original_size
        per = max(1, self.chunk_pixels // (h * w))
        thr = self._predictor.mask_threshold
        out: list[dict[str, Any]] = []
        for k in range(0, len(low), per):
            masks = self._predictor._transforms.postprocess_masks(low[k:k + per, None], (h, w))[:, 0] > thr
            out += [amg._plain(r) for r in amg._encode(masks)]
        return out

    @locked
    def generate(self, image: np.ndarray, embedding: Sam2Embedding | None = None, **params: Any) -> list[Proposal]:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        from . import amg2

        try:
            generator = SAM2AutomaticMaskGenerator(self.model, output_mode="coco_rle", **params)
        except (AssertionError, ValueError, TypeError) as exc:
            raise PromptError(f"invalid SAM 2.1 generator parameters {params}: {exc}") from exc
        if embedding is not None and tuple(embedding.original_size) != tuple(image.shape[:2]):
            raise PromptError(f"embedding is for a {embedding.original_size} image, not {image.shape[:2]}")
        if self.fast and amg2.supports(params):
            emb = embedding if embedding is not None else self.embed(image)
            p = self._predictor
            self._restore(p, emb)
            try:
                proposals = amg2.generate(p, emb.original_size, chunk_pixels=self.chunk_pixels,
                                          work_size=emb.work_size, **params)
            finally:
                p.reset_predictor()
            log.debug("SAM 2.1 generated %d masks (fast path)", len(proposals))
            return proposals
        if embedding is not None:
            predictor, original = generator.predictor, generator.predictor.set_image

            def set_image(img: np.ndarray) -> None:
                if tuple(img.shape[:2]) == tuple(embedding.original_size):
                    self._restore(predictor, embedding)
                else:  # a crop layer: encode it
                    original(img)

            predictor.set_image = set_image
        with torch.inference_mode():
            records = generator.generate(image)
        proposals = proposals_from_records(records)
        if embedding is None or embedding.work_size is None:
            return proposals
        from ..core import masks as M

        return [Proposal(M.resize(p.rle, embedding.work_size), p.predicted_iou, p.stability_score, p.point_xy, p.rle)
                for p in proposals]
