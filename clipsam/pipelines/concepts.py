"""The concept pipeline (SAM 3): every label asked as a noun phrase, the instances found decided and placed in a
part-whole tree; for ``everything``, the automatic masks of ``unknown_sam`` that no concept claimed join them,
labelled by CLIP (the ``unknown`` objects SAM 3 cannot give).

One :class:`ConceptPipeline` serves one call and holds that call's statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.labels import LabelDecision
from ..core.regions import Regions
from ..core.vocabulary import query_taxonomy
from ..result import Segmentation
from ..stages.assemble import assemble
from ..stages.concepts import (
    ConceptQuery,
    claimed,
    decide,
    merge_hits,
    object_queries,
    part_queries,
    place_parts,
    reconcile,
)
from ..stages.label import Labelled, drop_nested_same_label, label_tree
from ..stages.nest import nest, nest_proposals, propose
from ..stages.prepare import Work
from .points import PointPipeline, grid_params
from .requests import Everything, Query

__all__ = ["ConceptPipeline"]


class ConceptPipeline:
    """``query`` and ``everything`` for SAM 3 on the models, caches and settings of *seg*; :attr:`stats` says what
    the call did."""

    def __init__(self, seg: Any) -> None:
        self.seg, self.settings, self.policy = seg, seg.settings, seg.policy
        self.stats: dict[str, Any] = {"strategy": "concepts", "concept_queries": 0}

    def query(self, q: Query) -> Segmentation:
        work = self.seg.prepare(q.image)
        objects = sorted({id(n.object_node()): n.object_node() for n in q.resolved}.values(), key=lambda n: n.path)
        queries = object_queries(objects)
        flat = query_taxonomy(list(q.free)) if q.free else None
        if flat is not None:
            queries += [ConceptQuery(n, n.name) for n in flat.top]
        wants_parts = q.include_parts and any(n.is_part for n in q.resolved)
        rles, decisions, kinds = self.concepts(work, queries, wants_parts)
        regions, labelled = self.nest_labelled(rles, decisions, kinds)
        targets = list(q.resolved) + (list(flat.top) if flat is not None else [])
        matched = {i: (d, k) for i, (d, k) in enumerate(zip(labelled.decisions, labelled.kinds, strict=True))
                   if d.node is not None and any(d.node.is_a(t) for t in targets)}
        keep = drop_nested_same_label(regions.rles, matched, self.settings.containment)
        return assemble(work, regions, Labelled.from_matches(matched, len(regions)), keep, query=tuple(q.terms),
                        taxonomy=q.taxonomy, models=self.seg.model_names())

    def everything(self, e: Everything) -> Segmentation:
        """Every object label of the taxonomy asked as a concept; the automatic masks of ``unknown_sam`` that no
        concept claimed join them, labelled by CLIP; then one containment tree over all."""
        seg, tax = self.seg, e.taxonomy if e.label else None
        work = seg.prepare(e.image)
        rles, decisions, kinds = self.concepts(work, object_queries(tax.top), e.include_parts) if tax else ([], [], [])
        if seg.unknown_sam is not None:
            extra_rles, extra = self.unknown_regions(work, rles, decisions, tax, e)
            rles, decisions = rles + extra_rles, decisions + [d for d, _ in extra]
            kinds = kinds + [k for _, k in extra]
        regions, labelled = self.nest_labelled(rles, decisions, kinds)
        feats = PointPipeline(seg).embed(work, regions.rles) if e.with_embeddings and len(regions) else None
        return assemble(work, regions, labelled if tax is not None else None, range(len(regions)), taxonomy=tax,
                        feats=feats, models=seg.model_names())

    def unknown_regions(self, work: Work, rles: list, decisions: list, tax: Any, e: Everything
                        ) -> tuple[list, list[tuple[LabelDecision, str]]]:
        """``unknown_sam``'s automatic masks that no concept claimed, labelled by CLIP and reconciled with the
        concepts' regions: ``(masks, [(decision, kind)])``."""
        seg, s = self.seg, self.settings
        emb = seg.caches.unknown.get(work, seg.unknown_proposer)
        sam = work.sam(seg.unknown_proposer)
        params = grid_params(seg.unknown_sam if isinstance(seg.unknown_sam, str) else "", s.generator_params,
                             e.generator_params)
        rest = nest_proposals(propose(sam, work.input_for(sam), emb, params), duplicate_iou=s.duplicate_iou,
                              containment=s.containment)
        free_rows = np.flatnonzero(~claimed(rest.rles, rles))
        if not len(free_rows):
            return [], []
        rest = rest.take(free_rows)
        if tax is None:
            return list(rest.rles), [(LabelDecision(None), "unknown")] * len(rest)
        points = PointPipeline(seg)
        embed = lambda r: points.embed(work, r)  # noqa: E731
        labelled = label_tree(embed(rest.rles), rest.parent, tax, seg.text_bank, self.policy,
                              with_parts=e.include_parts, rles=rest.rles, embed=embed)
        if labelled.merged:  # near-duplicates of their owner are not returned
            keep = labelled.kept()
            rest = rest.take(keep)
            labelled = Labelled(tuple(labelled.decisions[i] for i in keep), tuple(labelled.kinds[i] for i in keep))
        extra = reconcile(rles, decisions, rest.rles, list(zip(labelled.decisions, labelled.kinds, strict=True)),
                          containment=s.containment)
        return list(rest.rles), extra

    def find(self, work: Work, queries: Sequence[Any]) -> list[tuple[int, Any, float]]:
        """``(query index, mask, score)`` for every instance SAM 3 finds for *queries* (vision features once)."""
        if not queries:
            return []
        emb = self.seg.caches.sam.get(work, self.seg.proposer)
        found = self.seg.proposer.find(emb, [q.phrase for q in queries])
        self.stats["concept_queries"] += len(queries)
        return [(k, h.rle, float(h.score)) for k, hits in enumerate(found) for h in hits]

    def concepts(self, work: Work, queries: Sequence[Any], with_parts: bool) -> tuple[list, list, list]:
        """Objects for *queries* and (*with_parts*) their parts: ``(rles, decisions, kinds)``."""
        s = self.settings
        objects = []
        for c in merge_hits(self.find(work, queries)):
            d = decide(c, queries, min_confidence=s.min_confidence, descend_confidence=s.descend_confidence)
            if d.node is not None:
                objects.append((c.rle, d))
        parts: list = []
        if with_parts and objects:
            asked: dict[str, Any] = {}
            for _, d in objects:
                for q in part_queries(d.node):
                    asked.setdefault(q.node.path_str, q)
            pq = list(asked.values())
            hits = [(pq[k], rle, score) for k, rle, score in self.find(work, pq)]
            parts = place_parts(objects, hits, containment=s.containment, max_part_share=s.max_part_share,
                                min_confidence=s.part_confidence)
        rles = [r for r, _ in objects] + [r for _, r, _ in parts]
        decisions = [d for _, d in objects] + [d for _, _, d in parts]
        return rles, decisions, ["object"] * len(objects) + ["part"] * len(parts)

    def nest_labelled(self, rles: list, decisions: list, kinds: list) -> tuple[Regions, Labelled]:
        s = self.settings
        regions = nest(rles, [d.score for d in decisions], np.ones(len(rles)), duplicate_iou=s.duplicate_iou,
                       containment=s.containment)
        ids = [int(i) for i in regions.ids]
        return regions, Labelled(tuple(decisions[i] for i in ids), tuple(kinds[i] for i in ids))
