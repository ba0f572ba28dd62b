"""The two interfaces between clipsam's pipeline and the models. Pure numpy: no torch here."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..core.masks import RLE

#: Name of the tiny random-weight architectures (tests only: outputs are meaningless).
TINY = "tiny-random"
#: The tiny random-weight SAM 3 (``transformers``' architecture at toy size).
TINY_SAM3 = "tiny-random-sam3"
#: Generator settings that come with the ``tiny-random`` entry: its quality scores are meaningless, so SAM's
#: default thresholds would drop every mask; from Python and from the CLI alike.
TINY_GENERATOR_PARAMS: dict[str, Any] = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@dataclass(frozen=True)
class Proposal:
    """One candidate mask from automatic generation.

    Attributes:
        rle: the mask as COCO RLE, at the size of the image given to ``generate``.
        predicted_iou: the model's own estimate of the mask's quality, in [0, 1] for SAM.
        stability_score: IoU between the mask thresholded a little above and below its cut-off.
        point_xy: the grid point (x, y pixels) that produced it, if any.
        full_rle: the same mask at the original image's resolution, made from the model's logits there (as stock
            SAM does), when the proposer embedded the original image for a smaller processing size; else ``None``.
    """

    rle: RLE
    predicted_iou: float
    stability_score: float
    point_xy: tuple[float, float] | None = None
    full_rle: RLE | None = None


@dataclass(frozen=True)
class PromptMasks:
    """Masks for one prompt, best first.

    Attributes:
        masks: ``(N, H, W) bool`` at the embedded image's size (N is 1 or 3: few masks, dense is fine).
        iou_predictions: ``(N,) float32`` predicted IoU of each mask.
        low_res_logits: ``(N, h, w) float32`` logits that can be fed back as ``mask_input`` of a later call.
        upscale_logits: the logits the masks are upsampled from when they differ from *low_res_logits* (SAM 2.1
            clamps the ones it hands back to +-32), for the proposer's ``upscale``; ``None``: *low_res_logits*.
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    low_res_logits: np.ndarray
    upscale_logits: np.ndarray | None = None


def locked(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run *method* under its object's ``_lock`` (a ``threading.RLock``): for adapters whose calls go through one
    stateful predictor (SAM's ``SamPredictor``, SAM 2.1's ``SAM2ImagePredictor``), so that one model can serve
    several threads (a server, a thread pool) and each call gets what it would get alone."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


def check_mask_input(mask_input: Any, expected_hw: tuple[int, int]) -> np.ndarray:
    """A prompt's ``mask_input`` as ``(1, h, w) float32`` low-resolution logits, or a
    :class:`~clipsam.errors.PromptError` saying what shape it must have."""
    from ..errors import PromptError

    arr = np.asarray(mask_input, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr
    if tuple(arr.shape[-2:]) != tuple(expected_hw):
        raise PromptError(f"mask prompt must be the low-resolution logits of an earlier call, shape "
                          f"(1, {expected_hw[0]}, {expected_hw[1]}), got {tuple(arr.shape)}")
    return arr


def work_to_image(xy: np.ndarray, image_hw: tuple[int, int], work_hw: tuple[int, int]) -> np.ndarray:
    """``(..., 2)`` (x, y) pixels at the processing size *work_hw* in the pixels of the image of size *image_hw*."""
    (h, w), (wh, ww) = image_hw, work_hw
    if (h, w) == (wh, ww):
        return xy
    return np.asarray(xy, dtype=np.float64) * np.array([w / ww, h / wh])


@runtime_checkable
class MaskProposer(Protocol):
    """Gives candidate masks: automatically, or for point / box / mask prompts."""

    name: str

    def embed(self, image: np.ndarray) -> Any:
        """Compute the expensive per-image state once for an ``(H, W, 3) uint8`` image."""

    def predict(
        self,
        embedding: Any,
        *,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> PromptMasks:
        """Masks for prompts in pixel coordinates of the embedded image, sorted by predicted IoU."""

    def generate(self, image: np.ndarray, embedding: Any = None, **params: Any) -> list[Proposal]:
        """Every mask of the image (the automatic "segment everything" path)."""


@dataclass(frozen=True)
class ConceptHit:
    """One instance a concept proposer found for a phrase: its mask (RLE at the embedded image's size), its score
    (the probability that it shows the phrase) and its box ``(x0, y0, x1, y1)``."""

    rle: RLE
    score: float
    box_xyxy: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


@runtime_checkable
class ConceptProposer(Protocol):
    """Finds every instance of a noun phrase (SAM 3): masks for concepts instead of for points."""

    name: str

    def embed(self, image: np.ndarray) -> Any:
        """The per-image state (vision features), computed once for an ``(H, W, 3) uint8`` image."""

    def find(self, embedding: Any, phrases: Sequence[str], *, threshold: float | None = None
             ) -> list[list[ConceptHit]]:
        """For each phrase, every instance found (best first)."""


def is_concept_proposer(proposer: Any) -> bool:
    """The proposer answers phrases (:class:`ConceptProposer`), not points."""
    return callable(getattr(proposer, "find", None))


@runtime_checkable
class RegionEmbedder(Protocol):
    """Embeds image crops and texts into one space (CLIP).

    Attributes:
        name: a human name for messages.
        cache_key: identifies the weights, for the on-disk text-embedding cache; ``None`` disables it.
        image_size: side of the square crops the model takes (pixels).
        logit_scale: the temperature that turns cosine similarities into logits (CLIP: 100).
    """

    name: str
    cache_key: str | None
    image_size: int
    logit_scale: float

    def embed_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, D) float32`` unit vectors for N ``(S, S, 3) uint8`` crops."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(M, D) float32`` unit vectors for M texts."""


@runtime_checkable
class DenseEmbedder(Protocol):
    """A :class:`RegionEmbedder` that can also embed every patch of a whole image in the text space, in one pass
    (what text-guided prompts and pooled region features need)."""

    def dense_features(self, image: np.ndarray) -> np.ndarray:
        """``(h, w, D) float32`` unit vectors, one per patch of an ``(H, W, 3) uint8`` image (row-major grid
        covering the whole image)."""


def dense_unsupported(embedder: Any) -> str | None:
    """``None`` when *embedder* gives dense features, else a sentence saying why not."""
    if not callable(getattr(embedder, "dense_features", None)):
        return f"{getattr(embedder, 'name', type(embedder).__name__)} has no dense_features()"
    why = getattr(embedder, "dense_unsupported", None)
    return why() if callable(why) else None


def proposals_from_records(records: Sequence[dict[str, Any]]) -> list[Proposal]:
    """Records of ``SamAutomaticMaskGenerator`` / ``SAM2AutomaticMaskGenerator`` (``output_mode="coco_rle"``)."""
    return [
        Proposal(
            rle={"size": [int(s) for s in r["segmentation"]["size"]], "counts": r["segmentation"]["counts"]},
            predicted_iou=float(r["predicted_iou"]),
            stability_score=float(r["stability_score"]),
            point_xy=(float(r["point_coords"][0][0]), float(r["point_coords"][0][1])),
        )
        for r in records
    ]
