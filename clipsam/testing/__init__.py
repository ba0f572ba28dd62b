"""Test helpers: the real SAM and open_clip architectures at tiny sizes, and two worlds with oracles.

* :func:`tiny_sam`, :func:`tiny_clip` and :func:`tiny_segmenter` build the *real* networks (``Sam`` with an
  ``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``, ``TwoWayTransformer``; an open_clip ``CLIP``) with
  random weights in well under a second. Real code paths, meaningless outputs: use them to test shapes,
  wiring, determinism and error handling, in clipsam's tests and in yours.
* The **exact** world (:func:`synthetic_scene`, :class:`OracleProposer`, :class:`OracleEmbedder`) paints known
  shapes with known labels and parts behind the same interfaces as SAM and CLIP, so that labels, label paths,
  the tree and ``unknown`` handling can be asserted exactly.
* The **CLIP-like** world (:class:`CLIPLikeWorld`) draws scenes, a SAM-like proposer (unions, halves,
  near-duplicates, slabs, parts) and an embedder whose similarities are soft and correlated like real CLIP's:
  the world in which labelling rules are measured (see :mod:`clipsam.testing.world`).
"""

from __future__ import annotations

from typing import Any

from ..models.base import TINY_GENERATOR_PARAMS
from ..models.tiny import tiny_clip, tiny_sam
from .oracle import (
    SCENE_TAXONOMY,
    OracleEmbedder,
    OracleProposer,
    Scene,
    SceneShape,
    oracle_segmenter,
    synthetic_scene,
)
from .world import CLIPLikeEmbedder, CLIPLikeWorld, Instance, SAMLikeProposer, WorldParams, WorldScene

__all__ = [
    "SCENE_TAXONOMY", "TINY_GENERATOR_PARAMS", "CLIPLikeEmbedder", "CLIPLikeWorld", "Instance", "OracleEmbedder",
    "OracleProposer", "SAMLikeProposer", "Scene", "SceneShape", "WorldParams", "WorldScene", "oracle_segmenter",
    "oracle_label_run", "synthetic_scene", "tiny_clip", "tiny_sam", "tiny_segmenter",
]


def tiny_segmenter(seed: int = 0, **kwargs: Any):
    """A :class:`~clipsam.Segmenter` on :func:`tiny_sam` and :func:`tiny_clip` (CPU, no text cache on disk)."""
    from ..segmenter import Segmenter

    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("text_cache", False)
    return Segmenter(sam="tiny-random", clip="tiny-random", seed=seed, **kwargs)


def oracle_label_run(photos: Any, out: Any, scene: Scene | None = None, *, include_unknown: bool = True,
                     formats: tuple[str, ...] = (), pngs: bool = False, force: bool = False,
                     overwrite: bool = False) -> dict[str, Any]:
    """Label the images in *photos* into *out* through the real ``clipsam label`` job, with the exact world's
    segmenter for *scene* (default :func:`synthetic_scene`): what the interop, YOLO and report tests (and
    ``examples/report_demo.py``) load. Returns ``annotations.json`` as a dict."""
    import json
    from pathlib import Path

    from ..dataset import Filters, LabelJob, list_images, run_local

    scene = scene if scene is not None else synthetic_scene()
    job = LabelJob(Path(out), scene.taxonomy, filters=Filters(include_unknown=include_unknown),
                   segmenter_spec={"sam": "oracle", "clip": "oracle"}, pngs=pngs, formats=formats)
    items = job.inputs(list_images(photos))
    record = job.prepare(force=force, items=items, overwrite=overwrite)
    run_local(job, job.pending(items), segmenter=oracle_segmenter(scene))
    job.finish(record, {})
    return json.loads((Path(out) / "annotations.json").read_text())
