"""The backend registry: what each kind of mask model can do, and the pipeline that uses it.

A SAM registry name (``vit_b``, ``sam2.1_hiera_b+``, ``sam3``, ``tiny-random``) resolves to one :class:`Backend`,
as timm registers models: its *pipeline* (``points``: SAM 1 / 2.1 answer point and box prompts and run the automatic
grid; ``concepts``: SAM 3 finds every instance of a phrase) and its *capabilities*. Options a backend cannot honour
are refused in one line by :func:`check_options` before any model is built or run. Adding a backend means one entry
here, a builder in :mod:`clipsam.models.build` and a pipeline it declares; ``tests/test_contract.py`` then runs every
public path over its tiny version. Pure Python; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .base import TINY, TINY_SAM3, is_concept_proposer

__all__ = ["BACKENDS", "CAPABILITIES", "TINY_SAM2", "TINY_VERSIONS", "Backend", "backend_for", "backend_of",
           "check_options"]

#: A SAM 2.1 Hiera-T with random weights (tests only): the real architecture, seeded.
TINY_SAM2 = "tiny-random-sam2"

#: What a backend may declare.
CAPABILITIES = {
    "point_prompts": "answers clicks, boxes and prior masks (segment_prompt, refine, part_points)",
    "grid": "runs the automatic point grid (generator parameters such as points_per_side)",
    "guided": "takes point prompts placed by CLIP's relevance maps (strategy='guided')",
    "concepts": "finds every instance of a noun phrase",
    "fullres_logits": "gives masks at the original resolution from its logits",
    "bf16": "runs in bfloat16 autocast on CUDA (precision='bf16')",
    "onnx": "runs its image encoder and mask decoder in ONNX Runtime on a CPU (runtime='onnx')",
}


#: ``SamAutomaticMaskGenerator``'s parameters (SAM 1), and SAM 2.1's generator's.
SAM_GENERATOR = frozenset({"points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                           "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
                           "crop_overlap_ratio", "crop_n_points_downscale_factor", "point_grids",
                           "min_mask_region_area"})
SAM2_GENERATOR = SAM_GENERATOR | {"mask_threshold", "use_m2m", "multimask_output"}


#: How a backend that lacks a capability says so.
_LACKS = {
    "point_prompts": "answers text and taxonomy queries and has no point prompts (for clicks and boxes use a SAM 1 / "
                     "2.1 model: vit_b, sam2.1_hiera_tiny …)",
    "guided": "takes no point prompts, so nothing to guide (it is asked for the concepts directly)",
    "grid": "runs no automatic point grid",
    "bf16": "is run in fp32 by clipsam (precision='bf16' is applied to SAM 1 only)",
    "onnx": "has no ONNX export in clipsam (SAM 1 and CLIP have)",
}


@dataclass(frozen=True)
class Backend:
    """One kind of mask model: its *pipeline* (``points`` or ``concepts``) and its *capabilities*
    (:data:`CAPABILITIES`), the generator parameters it takes, and the registry name of its tiny version."""

    name: str
    title: str
    pipeline: str
    capabilities: frozenset[str]
    tiny: str
    generator_params: frozenset[str] = frozenset()

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


BACKENDS: dict[str, Backend] = {
    "sam": Backend("sam", "SAM 1 (segment-anything)", "points",
                   frozenset({"point_prompts", "grid", "guided", "fullres_logits", "bf16", "onnx"}), TINY,
                   SAM_GENERATOR),
    "sam2": Backend("sam2", "SAM 2.1 (sam2)", "points",
                    frozenset({"point_prompts", "grid", "guided", "fullres_logits"}), TINY_SAM2, SAM2_GENERATOR),
    "sam3": Backend("sam3", "SAM 3 (transformers)", "concepts", frozenset({"concepts"}), TINY_SAM3),
}
#: Registry names of the tiny versions, by backend.
TINY_VERSIONS = {b.tiny: b.name for b in BACKENDS.values()}


def backend_of(sam_name: str) -> Backend:
    """The backend of a SAM registry name (an unknown name is SAM 1's: the builder says it is unknown)."""
    if sam_name in TINY_VERSIONS:
        return BACKENDS[TINY_VERSIONS[sam_name]]
    from .. import weights

    entry = weights.REGISTRY.get(sam_name)
    return BACKENDS.get(entry.extra.get("backend", "sam") if entry is not None else "sam", BACKENDS["sam"])


def backend_for(proposer: Any) -> Backend:
    """The backend of a proposer object (one the user built: it may declare ``backend``)."""
    if is_concept_proposer(proposer):
        return BACKENDS["sam3"]
    return BACKENDS.get(getattr(proposer, "backend", "sam"), BACKENDS["sam"])


def check_options(backend: Backend, *, strategy: str = "grid", refine: bool = False, part_points: int = 0,
                  generator_params: dict[str, Any] | None = None, precision: str = "fp32", speed: str = "exact",
                  prompts: bool = False, runtime: str = "torch") -> None:
    """Refuse, in one line, what *backend* cannot do -- before any model runs."""
    wants = []
    if prompts or refine or part_points:
        wants.append(("point_prompts", "refine, part_points and segment_prompt need them"))
    if strategy == "guided":
        wants.append(("guided", "strategy='guided' places point prompts; use strategy='grid'"))
    if generator_params:
        wants.append(("grid", f"generator parameters ({', '.join(sorted(generator_params))}) set that grid"))
    if precision == "bf16":
        wants.append(("bf16", "use precision='fp32'"))
    if runtime == "onnx":
        wants.append(("onnx", "use runtime='auto' (CLIP in ONNX Runtime, SAM in PyTorch) or 'torch'"))
    if speed == "fast" and not backend.can("grid"):
        wants.append(("grid", "speed='fast' thins that grid; use speed='exact'"))
    for capability, why in wants:
        if not backend.can(capability):
            raise ConfigError(f"{backend.title} {_LACKS[capability]}; {why}")
    unknown = sorted(set(generator_params or ()) - backend.generator_params)
    if unknown:
        raise ConfigError(f"unknown generator parameter(s) {', '.join(unknown)} for {backend.title}; valid: "
                          f"{', '.join(sorted(backend.generator_params))}")
