"""The configuration of a :class:`~clipsam.Segmenter` as data: one frozen, validated object holding every option that
changes results (label policy, nesting, crops, parts, generator defaults, precision). ``Segmenter(...)`` keywords
build it, :meth:`~clipsam.Segmenter.config` and the label job's fingerprint read it, and the CLI's shared options map
onto the same keywords. Pure Python; no torch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from . import tree as T
from .config import check_generator_params, check_segmenter_args
from .labels import DEFAULT_NEGATIVES, DEFAULT_TEMPLATES

__all__ = ["DEFAULT_MAX_SIDE", "FAST_GRID", "REGION_FEATURES", "SPEEDS", "UNION_MARGIN", "Settings"]

#: Images are processed with their long side at most this many pixels; masks come back at full resolution.
DEFAULT_MAX_SIDE = 1024
#: ``speed`` values.
SPEEDS = ("exact", "fast")
#: The generator grid of ``speed="fast"`` (a quarter of SAM's 32x32 decoder prompts) unless the caller sets one.
FAST_GRID: dict[str, Any] = {"points_per_side": 16}
#: ``runtime`` values (:mod:`clipsam.models.onnx`): what runs the models' heavy parts. Not a setting: like the
#: device, it changes how results are computed, not what they are (up to float rounding).
RUNTIMES = ("torch", "onnx", "auto")
#: How regions are embedded: a masked crop each, or dense features pooled inside each mask.
REGION_FEATURES = ("crops", "pooled")
#: Settings that must be numbers in [0, 1].
_UNIT = ("min_confidence", "descend_confidence", "part_confidence", "containment", "duplicate_iou", "part_pred_iou",
         "max_part_share", "crop_margin")
#: How much higher (in logits: CLIP's temperature times cosine similarity) a region must score on a label than a
#: region containing it, for the container to *merely contain* that label (a sofa+cat union called "cat"), where the
#: container's rest cannot tell (:func:`clipsam.stages.label.label_tree`). Measured in the CLIP-like world
#: (``python benchmarks/labels_world.py --margins --seeds 40``): a half, a part or a near-duplicate scores above its
#: whole object by at most 2.6 logits in 95 % of 868 pairs and 4.2 in 99 %; an object scores above the union of it and
#: its support by 5.2 logits at the median (286 pairs). At 4.5, 0.6 % of wholes would lose their label to a piece of
#: themselves, and half of all unions lose their member's label.
UNION_MARGIN = 4.5


@dataclass(frozen=True)
class Settings:
    """Every option of a :class:`~clipsam.Segmenter` that changes its results, validated on creation (see the
    segmenter's arguments for what each means). ``generator_params`` is read-only; ``replace(**changes)`` gives a
    validated copy."""

    max_side: int | None = DEFAULT_MAX_SIDE
    full_resolution: bool = True
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    negatives: tuple[str, ...] = DEFAULT_NEGATIVES
    min_confidence: float = 0.3
    descend_confidence: float = 0.5
    part_confidence: float = 0.3
    scoring: str = "subtree"
    vocabulary: bool = True
    union_margin: float | None = UNION_MARGIN
    crop_margin: float = 0.1
    crop_fill: str = "grey"
    containment: float = T.DEFAULT_CONTAINMENT
    duplicate_iou: float = T.DEFAULT_DUPLICATE_IOU
    part_pred_iou: float = 0.5
    max_part_share: float = 0.8
    generator_params: Any = field(default_factory=dict)
    region_features: str = "crops"
    precision: str = "fp32"
    speed: str = "exact"

    def __post_init__(self) -> None:
        check_segmenter_args(max_side=self.max_side, crop_fill=self.crop_fill, precision=self.precision,
                             device="auto", scoring=self.scoring, union_margin=self.union_margin,
                             **{k: getattr(self, k) for k in _UNIT})
        if self.speed not in SPEEDS:
            raise ConfigError(f"speed must be one of {', '.join(SPEEDS)}, got {self.speed!r}")
        if self.region_features not in REGION_FEATURES:
            raise ConfigError(f"region_features must be one of {', '.join(REGION_FEATURES)}, "
                              f"got {self.region_features!r}")
        params = check_generator_params(dict(self.generator_params or {}))
        object.__setattr__(self, "generator_params", MappingProxyType(params))
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "negatives", tuple(self.negatives))
        object.__setattr__(self, "full_resolution", bool(self.full_resolution))
        object.__setattr__(self, "vocabulary", bool(self.vocabulary))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts) for provenance files and fingerprints."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(templates=list(self.templates), negatives=list(self.negatives),
                   generator_params=dict(self.generator_params))
        return out
