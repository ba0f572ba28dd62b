"""Concept stage (SAM 3): taxonomy labels become noun-phrase queries; the instances found for them become
labelled regions. Pure numpy: the rules are tested with plain hit lists.

1. **Queries.** A query node expands to its subtree (``"animal"`` -> animal, dog, puppy, cat …); labelling a
   whole image asks every object label. Each label is asked by its first prompt. Parts are asked inside each
   found object by their ``"<whole> <part>"`` prompt (``"dog head"``).
2. **Merge.** Instances of different phrases that are one mask (IoU >= ``merge_iou``) are one region: a mask
   found for "dog" and for "puppy" is one dog region.
3. **Decide.** A label's score on a region is the best score of its own hits and of its subtree's (a puppy is a
   dog: ``S(dog) >= S(puppy)``, like CLIP's subtree mass). The region takes the top-level category with the best
   score (at least ``min_confidence``), then descends to the child with the best score while that score is at
   least ``descend_confidence`` (a label that was not asked, such as "animal" for the query "puppy", always
   gives way), so it ends on a label that was itself found. Path scores are ``S`` along the path, so
   they never increase with depth; they are probabilities on the same scale as CLIP's (SAM 3's instance scores:
   the query's probability times the presence probability).
4. **Parts.** A part hit must lie inside its object (``containment`` of it) and cover at most ``max_part_share``
   of it; its path scores are those of the object's levels the part belongs to (an inherited part: the ancestor's),
   then ``object score x hit score`` for the part's own levels, one score per label-path level.
5. **The rest** (``segment_everything``): automatic SAM 1 / 2.1 masks that no concept claimed, labelled by CLIP
   on their own, are reconciled with the concept regions (:func:`reconcile`): one that holds a concept region of
   its own label merely contains that object (an object with what it lies on) and is ``unknown``; one inside a
   concept object is a piece of it: a part if CLIP named one of that object's parts, else ``unknown part``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core import masks as M
from ..core.labels import LabelDecision
from ..core.taxonomy import TaxonomyNode

__all__ = ["MERGE_IOU", "Cluster", "ConceptQuery", "claimed", "decide", "merge_hits", "object_queries",
           "part_queries", "place_parts", "reconcile"]

#: Instances of two phrases with at least this IoU are one region.
MERGE_IOU = 0.8


@dataclass(frozen=True)
class ConceptQuery:
    """One phrase to ask, and the label it stands for."""

    node: TaxonomyNode
    phrase: str


@dataclass
class Cluster:
    """One region: its mask (the best hit's) and every ``(query index, score)`` that found it."""

    rle: M.RLE
    members: list[tuple[int, float]] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(s for _, s in self.members)


def _phrase(node: TaxonomyNode) -> str:
    return node.prompts[0] if node.prompts else node.name


def object_queries(nodes: Sequence[TaxonomyNode]) -> list[ConceptQuery]:
    """One query per object label in the subtrees of *nodes* (parts are asked later, inside objects)."""
    seen: dict[str, ConceptQuery] = {}
    for node in nodes:
        for n in node.walk():
            if not n.is_part and n.path_str not in seen:
                seen[n.path_str] = ConceptQuery(n, _phrase(n))
    return list(seen.values())


def part_queries(node: TaxonomyNode) -> list[ConceptQuery]:
    """One query per part label of an object label (its own parts or an is-a ancestor's, sub-parts included)."""
    return [ConceptQuery(p, _phrase(p)) for p in node.all_parts()]


def merge_hits(hits: Sequence[tuple[int, M.RLE, float]], merge_iou: float = MERGE_IOU) -> list[Cluster]:
    """Greedy, best score first: a hit joins the first cluster whose mask it overlaps by *merge_iou*, else it
    starts one. *hits* are ``(query index, mask, score)``."""
    order = sorted(range(len(hits)), key=lambda i: -hits[i][2])
    clusters: list[Cluster] = []
    for i in order:
        q, rle, score = hits[i]
        if clusters:
            iou = M.iou_matrix([rle], [c.rle for c in clusters])[0]
            j = int(np.argmax(iou))
            if iou[j] >= merge_iou:
                clusters[j].members.append((q, score))
                continue
        clusters.append(Cluster(rle, [(q, score)]))
    return clusters


def decide(cluster: Cluster, queries: Sequence[ConceptQuery], *, min_confidence: float,
           descend_confidence: float) -> LabelDecision:
    """The region's label from the labels that found it (see the module docstring); ``LabelDecision(None)`` when
    no category reaches *min_confidence*."""
    own: dict[str, float] = {}
    nodes: dict[str, TaxonomyNode] = {}
    for q, s in cluster.members:
        n = queries[q].node
        own[n.path_str] = max(own.get(n.path_str, 0.0), s)
        nodes[n.path_str] = n
    subtree: dict[str, float] = {}
    found = {}
    for key, s in own.items():
        chain = [nodes[key], *nodes[key].ancestors()]
        for a in chain:
            subtree[a.path_str] = max(subtree.get(a.path_str, 0.0), s)
            found[a.path_str] = a
    tops = [n for n in found.values() if n.parent is None or not n.parent.path]
    if not tops:
        return LabelDecision(None)
    node = max(tops, key=lambda n: subtree[n.path_str])
    if subtree[node.path_str] < min_confidence:
        return LabelDecision(None, best_guess=node, best_guess_score=subtree[node.path_str])
    while True:
        kids = [c for c in node.children if c.path_str in subtree]
        best = max(kids, key=lambda c: subtree[c.path_str], default=None)
        if best is None:
            break
        if node.path_str in own and subtree[best.path_str] < descend_confidence:
            break  # a found label gives way to a child only on clear evidence; one nobody asked always does
        node = best
    return LabelDecision(node, tuple(subtree[n.path_str] for n in [*reversed(node.ancestors()), node]))


def place_parts(objects: Sequence[tuple[M.RLE, LabelDecision]], hits: Sequence[tuple[ConceptQuery, M.RLE, float]],
                *, containment: float, max_part_share: float, min_confidence: float
                ) -> list[tuple[int, M.RLE, LabelDecision]]:
    """Part hits placed in the object that holds them: ``(object index, mask, decision)``. A hit is kept when its
    label is a part of that object's label, it lies inside the object (*containment* of it), covers at most
    *max_part_share* of it and ``object score x hit score`` reaches *min_confidence*."""
    if not objects or not hits:
        return []
    share = M.intersection_matrix([h[1] for h in hits], [o[0] for o in objects]).astype(np.float64)
    hit_area = np.maximum(M.area([h[1] for h in hits]).astype(np.float64), 1.0)
    obj_area = np.maximum(M.area([o[0] for o in objects]).astype(np.float64), 1.0)
    out = []
    for i, (query, rle, score) in enumerate(hits):
        fits = [j for j, (_, d) in enumerate(objects)
                if d.node is not None and any(p is query.node for p in d.node.all_parts())
                and share[i, j] / hit_area[i] >= containment and hit_area[i] <= max_part_share * obj_area[j]]
        if not fits:
            continue
        j = min(fits, key=lambda j: obj_area[j])  # the smallest object holding it
        obj = objects[j][1]
        p = obj.score * score
        if p < min_confidence:
            continue
        owner = query.node.object_node()  # the label the part belongs to: an ancestor of obj's (man has person's)
        scores = tuple(obj.path_scores[:len(owner.path)]) + (p,) * (len(query.node.path) - len(owner.path))
        out.append((j, rle, LabelDecision(query.node, scores)))
    return out


def claimed(rles: Sequence[M.RLE], concept_rles: Sequence[M.RLE], iou: float = 0.5) -> np.ndarray:
    """``(N,) bool``: which of *rles* a concept region already stands for (IoU >= *iou* with one of them)."""
    if not len(rles) or not len(concept_rles):
        return np.zeros(len(rles), dtype=bool)
    return M.iou_matrix(list(rles), list(concept_rles)).max(axis=1) >= iou



def _related(a: TaxonomyNode | None, b: TaxonomyNode | None) -> bool:
    return a is not None and b is not None and (a.is_a(b) or b.is_a(a))


def reconcile(concept_rles: Sequence[M.RLE], concept: Sequence[LabelDecision], rest_rles: Sequence[M.RLE],
              rest: Sequence[tuple[LabelDecision, str]], *, containment: float
              ) -> list[tuple[LabelDecision, str]]:
    """The CLIP decisions of the unclaimed regions *rest*, revised against the concept regions (rule 5 of the
    module docstring): ``(decision, kind)`` per region of *rest*."""
    if not len(rest_rles) or not len(concept_rles):
        return list(rest)
    inter = M.intersection_matrix(list(rest_rles), list(concept_rles)).astype(np.float64)
    rest_area = np.maximum(M.area(list(rest_rles)).astype(np.float64), 1.0)
    concept_area = np.maximum(M.area(list(concept_rles)).astype(np.float64), 1.0)
    out = []
    for i, (d, kind) in enumerate(rest):
        holds = [j for j in range(len(concept_rles)) if inter[i, j] / concept_area[j] >= containment
                 and concept_area[j] < rest_area[i]]
        inside = [j for j in range(len(concept_rles)) if inter[i, j] / rest_area[i] >= containment
                  and concept[j].node is not None and not concept[j].node.is_part and rest_area[i] < concept_area[j]]
        if d.node is not None and any(_related(d.node, concept[j].node) for j in holds):
            out.append((LabelDecision(None), "unknown"))
        elif inside:
            whole = min(inside, key=lambda j: concept_area[j])
            node = concept[whole].node
            if d.node is not None and d.node.is_part and any(p is d.node for p in node.all_parts()):
                out.append((d, "part"))
            else:
                out.append((LabelDecision(None), "unknown part"))
        else:
            out.append((d, kind))
    return out
