"""Checks of configuration values shared by the library and the CLI: each raises
:class:`~clipsam.errors.ConfigError` saying what was expected and what arrived. Pure Python; no torch."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["check_device_name", "check_generator_params", "check_segmenter_args", "check_unit"]


def check_unit(name: str, value: Any) -> float:
    """*value* as a float, after checking it is a number in [0, 1]."""
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.floating)) and 0.0 <= float(value) <= 1.0):
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: Automatic-generator parameters checked here (SAM's own checks are asserts, or divide by zero).
_POSITIVE_INT_PARAMS = ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor")
_UNIT_PARAMS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh",
                "crop_overlap_ratio")


def check_device_name(device: Any) -> None:
    """Refuse a device string that is none of ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (availability is
    checked when the models load, by :func:`clipsam.models.build.resolve_device`)."""
    if hasattr(device, "type") and not isinstance(device, str):  # a torch.device
        return
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")


def check_generator_params(params: dict[str, Any]) -> dict[str, Any]:
    """*params* itself, after refusing values SAM's generator would crash on (``points_per_side=0`` …)."""
    for key in _POSITIVE_INT_PARAMS:
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}")
    for key in _UNIT_PARAMS:
        if params.get(key) is not None:
            check_unit(key, params[key])
    for key in ("crop_n_layers", "min_mask_region_area"):
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise ConfigError(f"{key} must be a whole number >= 0, got {value!r}")
    return params


def check_segmenter_args(*, max_side: Any, crop_fill: str, precision: str, device: Any, scoring: Any = "subtree",
                         union_margin: Any = None, **unit: Any) -> None:
    """The checks of :class:`~clipsam.Segmenter`'s arguments (*unit*: those that must lie in [0, 1])."""
    from .crops import FILL_MODES
    from .labels import SCORINGS

    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if union_margin is not None and (isinstance(union_margin, bool) or not isinstance(union_margin, (int, float))
                                     or not np.isfinite(union_margin) or union_margin < 0):
        raise ConfigError(f"union_margin must be a number of nats >= 0 (or None), got {union_margin!r}")

    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                 or max_side < 16):
        raise ConfigError(f"max_side must be a whole number of pixels, at least 16 (or None), got {max_side!r}")
    for name, value in unit.items():
        check_unit(name, value)
    if crop_fill not in FILL_MODES:
        raise ConfigError(f"crop_fill must be one of {', '.join(FILL_MODES)}, got {crop_fill!r}")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")
    check_device_name(device)
