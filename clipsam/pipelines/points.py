"""The point pipeline (SAM 1 and SAM 2.1): masks from the automatic point grid or from prompts that CLIP's relevance
maps place (``strategy="guided"``), then nest -> embed -> label -> parts / refine -> assemble.

One :class:`PointPipeline` serves one call: it holds that call's statistics, never the segmenter's, so calls from
several threads on one segmenter do not mix them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..core.regions import Regions
from ..core.taxonomy import Taxonomy
from ..models.backends import TINY_VERSIONS
from ..models.base import TINY_GENERATOR_PARAMS, dense_unsupported
from ..result import Segmentation
from ..stages.assemble import assemble, prompt_result
from ..stages.embed import embed_regions
from ..stages.guide import guide_targets, guided_part_candidates, pool_regions, propose_guided
from ..stages.label import Labelled, drop_nested_same_label, label_tree, match_query
from ..stages.nest import nest, nest_proposals, propose
from ..stages.parts import merge_candidates, part_candidates, refine_masks
from ..stages.prepare import Work
from ..stages.prompt import predict_prompt, validate_prompts
from .requests import Everything, Query

log = logging.getLogger(__name__)

__all__ = ["PointPipeline", "grid_params"]


def grid_params(sam_name: str, settings_params: Any, call_params: dict[str, Any]) -> dict[str, Any]:
    """The generator parameters of one call: a tiny entry's own defaults, the segmenter's, then the call's."""
    own = TINY_GENERATOR_PARAMS if sam_name in TINY_VERSIONS else {}
    return {**own, **dict(settings_params), **call_params}


class PointPipeline:
    """``query`` and ``everything`` for a point-prompted SAM, on the models, caches and settings of *seg* (a
    :class:`~clipsam.Segmenter`); :attr:`stats` says what the call did, with ``seconds`` per stage (see
    :meth:`timed`)."""

    def __init__(self, seg: Any) -> None:
        self.seg, self.settings, self.policy = seg, seg.settings, seg.policy
        self.stats: dict[str, Any] = {"seconds": {}}
        self._nested = 0.0  # seconds spent in timed blocks inside the one now open

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the seconds of the block to ``stats["seconds"][stage]``, less those of timed blocks inside it (the
        labelling stage embeds pieces' crops: that time is ``embed_regions``'s, not ``label``'s), so the stages add
        up to the call."""
        start, outer, self._nested = time.perf_counter(), self._nested, 0.0
        try:
            yield
        finally:
            total = time.perf_counter() - start
            seconds = self.stats["seconds"]
            seconds[stage] = round(seconds.get(stage, 0.0) + total - self._nested, 4)
            self._nested = outer + total

    # -- requests ---------------------------------------------------------------------------------------------------
    def query(self, q: Query) -> Segmentation:
        s = self.settings
        guide = guide_targets(q.taxonomy, q.resolved, q.free, self.policy) if q.strategy == "guided" else None
        work, emb, regions = self.candidates(q.image, q.generator_params, guide)
        feats = self.embed(work, regions.rles)
        regions, feats, matched, keep = self.match(work, emb, q, regions, feats, q.part_points)
        if q.refine and keep:  # refined masks are nested, embedded and labelled anew: labels describe the new masks
            with self.timed("refine"):
                regions, feats = refine_masks(work.sam(self.seg.proposer), emb, regions, keep, feats,
                                              lambda r: self.embed(work, r))
                regions = nest(regions.rles, regions.predicted_iou, regions.stability_score,
                               duplicate_iou=s.duplicate_iou, containment=s.containment)
            regions, feats, matched, keep = self.match(work, emb, q, regions, feats[regions.ids], 0)
        chosen = Labelled.from_matches(matched, len(regions))
        with self.timed("assemble"):
            return assemble(work, regions, chosen, keep, query=tuple(q.terms), taxonomy=q.taxonomy, feats=feats,
                            models=self.seg.model_names())

    def everything(self, e: Everything) -> Segmentation:
        tax = e.taxonomy if e.label else None
        guide = None
        if e.strategy == "guided":
            guide = ([[n.prompts for n in top.walk() if not n.is_part] for top in tax.top],
                     self.policy.competitors(tax))
        work, emb, regions = self.candidates(e.image, e.generator_params, guide)
        feats, labelled = None, None
        if tax is not None:
            feats = self.embed(work, regions.rles)
            regions, feats, labelled = self.label(work, emb, regions, feats, tax, e.include_parts, e.part_points,
                                                  guided=e.strategy == "guided")
        elif e.with_embeddings:
            feats = self.embed(work, regions.rles)
        keep = labelled.kept() if labelled is not None else range(len(regions))
        with self.timed("assemble"):
            return assemble(work, regions, labelled, keep, taxonomy=tax, feats=feats, models=self.seg.model_names())

    def prompt(self, image: Any, points: Any, labels: Any, box: Any, mask: Any, multimask: bool | None
               ) -> Segmentation:
        """SAM's masks for clicks, a box, a prior mask (see :meth:`~clipsam.Segmenter.segment_prompt`)."""
        seg = self.seg
        work = seg.prepare(image)
        prompts = validate_prompts(points, labels, box, work.original_size)  # before SAM runs
        emb = seg.caches.sam.get(work, seg.proposer)
        out = predict_prompt(seg.proposer, emb, work, *prompts, mask=mask, multimask=multimask)
        pts, lbls, bx = prompts
        given = {**({"points": pts.tolist(), "labels": lbls.tolist()} if pts is not None else {}),
                 **({"box": bx.tolist()} if bx is not None else {})}
        logits = out.upscale_logits if out.upscale_logits is not None else out.low_res_logits
        full = seg.proposer.upscale(emb, logits) if work.embeds_original(seg.proposer) else None
        return prompt_result(work, out.masks, out.iou_predictions, out.low_res_logits, seg.model_names(), given,
                             full_rles=full)

    # -- stages -----------------------------------------------------------------------------------------------------
    def candidates(self, image: Any, params: dict[str, Any], guide: tuple[list, list] | None = None
                   ) -> tuple[Work, Any, Regions]:
        """prepare -> propose (the point grid, or prompts guided by relevance maps for *guide*'s targets) -> nest."""
        s, seg = self.settings, self.seg
        with self.timed("prepare_and_embed"):
            work = seg.prepare(image)
            emb = seg.caches.sam.get(work, seg.proposer)
        with self.timed("propose"):
            props = self.guided(work, emb, *guide) if guide is not None else None
            if props is None:
                params = grid_params(seg.sam_name, s.generator_params, params)
                sam = work.sam(seg.proposer)
                props = propose(sam, work.input_for(sam), emb, params)
                side = params.get("points_per_side", 32)
                self.stats.update(strategy="grid", decoder_prompts=int(side) ** 2 if side else None)
        with self.timed("nest"):
            regions = nest_proposals(props, duplicate_iou=s.duplicate_iou, containment=s.containment)
        return work, emb, regions

    def dense(self, work: Work) -> np.ndarray:
        """The embedder's dense patch features of the image (one CLIP pass, cached per image)."""
        return self.seg.caches.dense(work, self.seg.embedder)

    def guided(self, work: Work, emb: Any, targets: list, competitors: list) -> list[Any] | None:
        """SAM's masks for the seeds of every target's relevance map, or ``None`` (use the grid) when the embedder
        has no dense features."""
        why = dense_unsupported(self.seg.embedder)
        if why:
            log.info("guided prompts unavailable (%s): using the point grid", why)
            return None
        props, stats = propose_guided(work.sam(self.seg.proposer), emb, self.dense(work), self.seg.text_bank,
                                      targets, competitors, work.pixels.shape[:2])
        self.stats.update(stats)
        return props

    def embed(self, work: Work, rles: Sequence[Any]) -> np.ndarray:
        s, embedder = self.settings, self.seg.embedder
        with self.timed("embed_regions"):
            if s.region_features == "pooled" and len(rles) and dense_unsupported(embedder) is None:
                return pool_regions(self.dense(work), rles)
            return embed_regions(work.pixels, rles, embedder, margin=s.crop_margin, fill=s.crop_fill)

    def match(self, work: Work, emb: Any, q: Query, regions: Regions, feats: np.ndarray, part_points: int
              ) -> tuple[Any, ...]:
        """label (when the query names taxonomy nodes) -> match the query -> drop matches nested in a same-label
        match: (regions, feats, matched, keep). Free text competes against the taxonomy's labels either way."""
        labelled = None
        if q.resolved and q.taxonomy is not None:
            regions, feats, labelled = self.label(work, emb, regions, feats, q.taxonomy, q.include_parts,
                                                  part_points)
        with self.timed("label"):
            matched = match_query(feats, regions.parent, q.resolved, q.free, self.seg.text_bank, self.policy,
                                  labelled, q.taxonomy, rles=regions.rles, embed=lambda r: self.embed(work, r))
            keep = drop_nested_same_label(regions.rles, matched, self.settings.containment)
        return regions, feats, matched, keep

    def label(self, work: Work, emb: Any, regions: Regions, feats: np.ndarray, tax: Taxonomy, with_parts: bool,
              part_points: int, guided: bool = False) -> tuple[Regions, np.ndarray, Labelled]:
        """label, then prompt for parts inside labelled objects -- guided by the parts' relevance maps (*guided*)
        and/or at *part_points* points each -- re-nest and label again."""
        seg = self.seg
        embed = lambda r: self.embed(work, r)  # noqa: E731
        with self.timed("label"):
            labelled = label_tree(feats, regions.parent, tax, seg.text_bank, self.policy, with_parts=with_parts,
                                  rles=regions.rles, embed=embed)
        guided = guided and with_parts and dense_unsupported(seg.embedder) is None
        if part_points <= 0 and not guided:
            return regions, feats, labelled
        with self.timed("parts"):
            merged, feats = self.parts(work, emb, regions, feats, labelled, part_points, guided)
        if merged is regions:
            return regions, feats, labelled
        with self.timed("label"):
            return merged, feats, label_tree(feats, merged.parent, tax, seg.text_bank, self.policy,
                                             with_parts=with_parts, rles=merged.rles, embed=embed)

    def parts(self, work: Work, emb: Any, regions: Regions, feats: np.ndarray, labelled: Labelled,
              part_points: int, guided: bool) -> tuple[Regions, np.ndarray]:
        """SAM's part masks inside the labelled objects, merged into *regions* (the same object when none is new)."""
        s, seg = self.settings, self.seg
        objects = [i for i, k in enumerate(labelled.kinds) if k == "object"]
        limits = {"containment": s.containment, "max_part_share": s.max_part_share, "min_pred_iou": s.part_pred_iou}
        rles, ious = [], []
        if guided:
            rles, ious, calls = guided_part_candidates(
                work.sam(seg.proposer), emb, self.dense(work), seg.text_bank, regions,
                [(i, labelled.decisions[i].node) for i in objects], s.negatives, **limits)
            self.stats["decoder_prompts"] = self.stats.get("decoder_prompts", 0) + calls
        if part_points > 0:
            more, more_iou = part_candidates(work.sam(seg.proposer), emb, regions, objects, part_points, **limits)
            rles, ious = rles + more, ious + more_iou
        return merge_candidates(regions, feats, rles, ious, embed=lambda r: self.embed(work, r),
                                containment=s.containment, duplicate_iou=s.duplicate_iou)
