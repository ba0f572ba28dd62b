"""clipsam: text-prompted, open-vocabulary, hierarchical image segmentation with Segment Anything and CLIP.

>>> import clipsam
>>> seg = clipsam.segment("photo.jpg", "dog")          # doctest: +SKIP
>>> seg.best.score, seg.best.bbox_xywh                    # doctest: +SKIP

``import clipsam`` is light: torch, SAM and CLIP load on first use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .core.taxonomy import Taxonomy, TaxonomyNode, load_taxonomy
from .errors import (
    ChecksumError,
    ClipsamError,
    ConfigError,
    ImageError,
    LockError,
    ModelError,
    PromptError,
    TaxonomyError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsMissingError,
)
from .result import Region, Segmentation

if TYPE_CHECKING:
    from .segmenter import Segmenter

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ChecksumError", "ClipsamError", "ConfigError", "ImageError", "LockError", "ModelError",
    "PromptError", "Region", "Segmentation",
    "Segmenter", "Taxonomy", "TaxonomyError", "TaxonomyNode", "UnsafeCheckpointError", "WeightsError",
    "WeightsMissingError", "__version__", "load_taxonomy", "segment",
]

_DEFAULT: dict[tuple, Any] = {}


def __getattr__(name: str) -> Any:
    if name == "Segmenter":
        from .segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'clipsam' has no attribute {name!r}")


def segment(image: Any, query: Any, *, sam: str | None = None, clip: str | None = None, device: str = "auto",
            taxonomy: Any = None, **kwargs: Any) -> Segmentation:
    """Regions of *image* matching a text *query*: ``clipsam.segment("photo.jpg", "dog")``.

    Models (default SAM ``vit_b`` and CLIP ``ViT-B-16/openai``) load once and are reused by later calls with
    the same names. Other keyword arguments go to :meth:`Segmenter.segment`.
    """
    from .segmenter import DEFAULT_CLIP, DEFAULT_SAM, Segmenter

    key = (sam or DEFAULT_SAM, clip or DEFAULT_CLIP, device)
    if key not in _DEFAULT:
        _DEFAULT.clear()
        _DEFAULT[key] = Segmenter(sam=key[0], clip=key[1], device=device)
    return _DEFAULT[key].segment(image, query, taxonomy=taxonomy, **kwargs)
