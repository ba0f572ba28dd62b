"""SAM 2.1 (the ``sam2`` package) behind the :class:`~clipsam.models.base.MaskProposer` interface.

Install the backend with ``SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sam2==1.1.0'`` (the optional CUDA
extension only speeds up mask post-processing on GPUs). Select it with ``--sam sam2.1_hiera_tiny`` (or ``_small``,
``_base_plus``, ``_large``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, PromptError
from .base import PromptMasks, Proposal, proposals_from_records

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
    features: dict[str, Any]
    original_size: tuple[int, int]


class Sam2Proposer:
    """A SAM 2.1 model as a mask proposer (prompted prediction and automatic generation)."""

    def __init__(self, model: Any, device: torch.device | str = "cpu", name: str = "sam2") -> None:
        _require_sam2()
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.name = name
        self._predictor = SAM2ImagePredictor(self.model)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        size = self.model.sam_prompt_encoder.mask_input_size
        return int(size[0]), int(size[1])

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Sam2Embedding:
        self._predictor.set_image(image)
        emb = Sam2Embedding(self._predictor._features, tuple(image.shape[:2]))
        self._predictor.reset_predictor()
        return emb

    def _restore(self, predictor: Any, emb: Sam2Embedding) -> None:
        predictor.reset_predictor()
        predictor._features = emb.features
        predictor._orig_hw = [tuple(emb.original_size)]
        predictor._is_image_set = True
        predictor._is_batch = False

    @torch.inference_mode()
    def predict(self, embedding: Sam2Embedding, *, point_coords: np.ndarray | None = None,
                point_labels: np.ndarray | None = None, box: np.ndarray | None = None,
                mask_input: np.ndarray | None = None, multimask_output: bool = True) -> PromptMasks:
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            if mask_input.ndim == 2:
                mask_input = mask_input[None]
            if tuple(mask_input.shape[-2:]) != self.mask_input_size:
                raise PromptError(f"mask prompt must be low-resolution logits of shape (1, {self.mask_input_size[0]}, "
                                  f"{self.mask_input_size[1]}), got {tuple(mask_input.shape)}")
        self._restore(self._predictor, embedding)
        try:
            masks, iou, low = self._predictor.predict(point_coords=point_coords, point_labels=point_labels, box=box,
                                                      mask_input=mask_input, multimask_output=multimask_output)
        finally:
            self._predictor.reset_predictor()
        order = np.argsort(-iou, kind="stable")
        return PromptMasks(np.asarray(masks)[order].astype(bool), np.asarray(iou)[order].astype(np.float32),
                           np.asarray(low)[order].astype(np.float32))

    def generate(self, image: np.ndarray, embedding: Sam2Embedding | None = None, **params: Any) -> list[Proposal]:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        try:
            generator = SAM2AutomaticMaskGenerator(self.model, output_mode="coco_rle", **params)
        except (AssertionError, ValueError, TypeError) as exc:
            raise PromptError(f"invalid SAM 2.1 generator parameters {params}: {exc}") from exc
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
        return proposals_from_records(records)
