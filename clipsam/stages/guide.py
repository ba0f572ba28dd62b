"""Guide stage: CLIP finds where, SAM cuts. Pure numpy, apart from the proposer call.

Dense patch embeddings of the whole image (one CLIP pass, :meth:`~clipsam.models.base.DenseEmbedder.dense_features`)
give each query target a relevance map: per patch, the probability of the target (its prompt sets summed, as in
subtree scoring) in one softmax with the competitors. Connected high-relevance regions become a few SAM prompts
(the peak as a point, the region's box) on the cached image embedding; the masks SAM returns go through the same
crop scoring, tree and label stage as grid proposals, so the final decision is still CLIP on the masked crop.

The same dense features, averaged inside a mask, give region embeddings without one crop per region
(:func:`pool_regions`, the mask pooling of FC-CLIP and others).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import masks as M
from ..core.labels import prompt_sets, softmax
from ..core.taxonomy import Taxonomy, TaxonomyNode
from ..core.vocabulary import query_taxonomy
from ..models.base import Proposal
from .label import LabelPolicy

log = logging.getLogger(__name__)

__all__ = ["STRATEGIES", "Seed", "find_seeds", "guide_targets", "guided_part_candidates", "guided_proposals",
           "pool_regions", "propose_guided", "relevance", "seed_prompts"]

#: How candidate masks are found: SAM's full point grid, or prompts placed by CLIP's relevance maps.
STRATEGIES = ("grid", "guided")

#: Defaults: a patch belongs to a target's region from this probability; at most this many regions per target.
MIN_RELEVANCE = 0.3
MAX_SEEDS = 6


def relevance(dense: np.ndarray, text: np.ndarray, groups: Sequence[Sequence[int]], scale: float) -> np.ndarray:
    """``(T, h, w)`` per-patch probability of each target.

    Args:
        dense: ``(h, w, D)`` unit patch embeddings.
        text: ``(K, D)`` unit text embeddings: every target's prompt sets, then the competitors.
        groups: for each target, the rows of *text* that are it (a label and its subtree); the other rows compete.
        scale: the embedder's logit scale.
    """
    h, w, d = dense.shape
    p = softmax(scale * (dense.reshape(-1, d) @ text.T))
    return np.stack([p[:, list(g)].sum(axis=1).reshape(h, w) for g in groups]) if groups else np.zeros((0, h, w))


@dataclass(frozen=True)
class Seed:
    """One connected high-relevance region of a map, in grid cells: its peak ``(row, col)``, its box
    ``(row0, col0, row1, col1)`` (exclusive ends), its mass (summed relevance) and its peak value."""

    peak: tuple[int, int]
    box: tuple[int, int, int, int]
    mass: float
    value: float


def find_seeds(rel: np.ndarray, *, threshold: float = MIN_RELEVANCE, max_seeds: int = MAX_SEEDS,
               within: np.ndarray | None = None) -> list[Seed]:
    """Connected regions (4-neighbour) of cells with relevance >= *threshold*, largest mass first; when none
    reaches it, the single best cell (if it holds at least a fifth of *threshold*). *within*: an ``(h, w)`` bool
    mask of cells allowed (e.g. inside an object)."""
    h, w = rel.shape
    allowed = np.ones((h, w), bool) if within is None else within.astype(bool)
    on = (rel >= threshold) & allowed
    seen = np.zeros((h, w), bool)
    seeds: list[Seed] = []
    for y0, x0 in zip(*np.nonzero(on), strict=True):
        if seen[y0, x0]:
            continue
        stack, cells = [(int(y0), int(x0))], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            cells.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and on[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = np.asarray(cells).T
        k = _interior_peak(rel, ys, xs)
        seeds.append(Seed((int(ys[k]), int(xs[k])), (int(ys.min()), int(xs.min()), int(ys.max()) + 1,
                                                      int(xs.max()) + 1), float(rel[ys, xs].sum()),
                          float(rel[ys[k], xs[k]])))
    if not seeds and allowed.any():
        masked = np.where(allowed, rel, -1.0)
        y, x = np.unravel_index(int(np.argmax(masked)), rel.shape)
        if masked[y, x] >= threshold / 5:
            seeds.append(Seed((int(y), int(x)), (int(y), int(x), int(y) + 1, int(x) + 1), float(rel[y, x]),
                              float(rel[y, x])))
    return sorted(seeds, key=lambda s: -s.mass)[:max_seeds]


def _interior_peak(rel: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> int:
    """Index of the region's prompt cell: among its cells within 90 % of its best relevance, the one deepest inside
    it (a click at a region's edge is ambiguous to SAM and may miss a round object altogether)."""
    inside = set(zip(ys.tolist(), xs.tolist(), strict=True))
    depth = {c: 0 for c in inside}
    frontier = [c for c in inside if any(n not in inside for n in _neighbours(c))]
    for c in frontier:
        depth[c] = 1
    level = 1
    while frontier:  # breadth-first from the region's edge inwards
        nxt = []
        for c in frontier:
            for n in _neighbours(c):
                if n in inside and depth[n] == 0:
                    depth[n] = level + 1
                    nxt.append(n)
        frontier, level = nxt, level + 1
    values = rel[ys, xs]
    good = values >= 0.9 * values.max()
    return int(max(np.nonzero(good)[0], key=lambda i: (depth[(int(ys[i]), int(xs[i]))], values[i])))


def _neighbours(c: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    y, x = c
    return ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))


def seed_prompts(seed: Seed, grid: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A seed as SAM prompts in pixels of an image of *size* ``(H, W)``: the peak cell's centre ``(x, y)`` and the
    region's box ``(x0, y0, x1, y1)``, grown by half a cell on every side (patches are coarse)."""
    gh, gw = grid
    sy, sx = size[0] / gh, size[1] / gw
    py, px = seed.peak
    point = np.asarray([(px + 0.5) * sx, (py + 0.5) * sy], dtype=np.float64)
    y0, x0, y1, x1 = seed.box
    box = np.asarray([max(0.0, (x0 - 0.5) * sx), max(0.0, (y0 - 0.5) * sy), min(size[1], (x1 + 0.5) * sx),
                      min(size[0], (y1 + 0.5) * sy)], dtype=np.float64)
    return point, box


def guided_proposals(proposer: Any, embedding: Any, seeds: Sequence[Seed], grid: tuple[int, int],
                     size: tuple[int, int]) -> tuple[list[Proposal], int]:
    """SAM's masks for each seed: the peak point with the box (one mask), and the peak point alone (SAM's three
    ambiguity-aware masks: part, object, group). Returns the proposals and the number of decoder prompts."""
    props: list[Proposal] = []
    calls = 0
    for seed in seeds:
        point, box = seed_prompts(seed, grid, size)
        for kwargs in ({"box": box, "multimask_output": False}, {"multimask_output": True}):
            out = proposer.predict(embedding, point_coords=point[None], point_labels=np.ones(1, dtype=np.int64),
                                   **kwargs)
            calls += 1
            for mask, iou in zip(out.masks, out.iou_predictions, strict=True):
                if mask.any():
                    props.append(Proposal(M.encode(np.asarray(mask, dtype=bool)), float(iou), 1.0,  # type: ignore
                                          (float(point[0]), float(point[1]))))
    return props, calls


def propose_guided(proposer: Any, embedding: Any, dense: np.ndarray, bank: Any, targets: Sequence[Sequence[tuple]],
                   competitors: Sequence[tuple], size: tuple[int, int]) -> tuple[list[Proposal], dict[str, Any]]:
    """Relevance maps of *targets* against *competitors* on *dense*, their seeds, and SAM's masks for them (on an
    image of *size*). Returns the proposals and what it did (``decoder_prompts``, ``seeds``)."""
    text = bank.embed([p for t in targets for p in t] + list(competitors))
    groups, start = [], 0
    for t in targets:
        groups.append(range(start, start + len(t)))
        start += len(t)
    maps = relevance(dense, text, groups, bank.logit_scale)
    seeds = [seed for m in maps for seed in find_seeds(m)]
    props, calls = guided_proposals(proposer, embedding, seeds, dense.shape[:2], size)
    log.info("guided: %d targets, %d seeds, %d decoder prompts, %d masks", len(targets), len(seeds), calls, len(props))
    return props, {"strategy": "guided", "decoder_prompts": calls, "seeds": len(seeds), "clip_dense_passes": 1}


def guided_part_candidates(proposer: Any, embedding: Any, dense: np.ndarray, bank: Any, regions: Any,
                           objects: Sequence[tuple[int, TaxonomyNode]], negatives: Sequence[str], *,
                           containment: float, max_part_share: float, min_pred_iou: float
                           ) -> tuple[list[M.RLE], list[float], int]:
    """Level by level: inside each labelled object (``(row, node)``), relevance maps of its parts (against the
    object's own labels and the negatives) seed SAM prompts; masks that lie inside the object and are clearly
    smaller are kept. Returns the masks, their predicted IoUs and the number of decoder prompts."""
    from .parts import inside_and_smaller

    rles: list[M.RLE] = []
    ious: list[float] = []
    calls = 0
    gh, gw = dense.shape[:2]
    for row, node in objects:
        parts = [p for p in node.all_parts() if p.parent is not None and not p.parent.is_part]
        if not parts:
            continue
        whole = M.decode(regions.rles[row])
        h, w = whole.shape
        ys, xs = np.nonzero(whole)
        cells = np.zeros((gh, gw), bool)
        cells[ys * gh // h, xs * gw // w] = True
        targets = [[n.prompts for n in p.walk()] for p in parts]
        comps = [n.prompts for n in node.object_node().walk() if not n.is_part] + prompt_sets(negatives)
        text = bank.embed([q for t in targets for q in t] + comps)
        groups, start = [], 0
        for t in targets:
            groups.append(range(start, start + len(t)))
            start += len(t)
        seeds = [s for m in relevance(dense, text, groups, bank.logit_scale)
                 for s in find_seeds(m, within=cells, max_seeds=2)]
        props, n = guided_proposals(proposer, embedding, seeds, (gh, gw), (h, w))
        calls += n
        for prop in props:
            mask = M.decode(prop.rle)
            if prop.predicted_iou >= min_pred_iou and inside_and_smaller(mask, whole, containment=containment,
                                                                         max_part_share=max_part_share):
                rles.append(prop.rle)
                ious.append(prop.predicted_iou)
    return rles, ious, calls


def _labels_of(node: TaxonomyNode) -> list[TaxonomyNode]:
    """A target's labels: an object and everything below it by is-a; a part and its sub-parts."""
    if node.is_part:
        return [n for n in node.walk()]
    return [n for n in node.walk() if not n.is_part]


def guide_targets(taxonomy: Taxonomy | None, resolved: Sequence[TaxonomyNode], free: Sequence[str],
                  policy: LabelPolicy) -> tuple[list[list[tuple[str, ...]]], list[tuple[str, ...]]]:
    """The prompt sets of each query target (a named taxonomy node with its subtree; a free-text word with its
    hyponyms) and what competes with them on the relevance maps: the label stage's competitors plus the
    taxonomy's other labels (not above or below a target)."""
    targets = [[n.prompts for n in _labels_of(node)] for node in resolved]
    comps: list[tuple[str, ...]] = []
    if free:
        flat = query_taxonomy(list(free), policy.words())
        targets += [[n.prompts for n in top.walk()] for top in flat.top]
        comps += policy.competitors(flat, others=taxonomy)
    if taxonomy is not None and resolved:
        comps += policy.competitors(taxonomy)
        comps += [n.prompts for n in taxonomy if not any(n.is_a(r) or r.is_a(n) or n in _labels_of(r)
                                                         for r in resolved)]
    mine = {p for t in targets for p in t}
    comps = [c for c in dict.fromkeys(comps or prompt_sets(policy.negatives)) if c not in mine]
    return targets, comps


def pool_regions(dense: np.ndarray, rles: Sequence[M.RLE], batch: int = 64) -> np.ndarray:
    """``(N, D)`` unit region embeddings: the dense patch embeddings averaged inside each mask, each patch
    weighted by the share of it the mask covers (a mask smaller than a patch takes that patch)."""
    gh, gw, d = dense.shape
    flat = dense.reshape(-1, d).astype(np.float64)
    out = np.zeros((len(rles), d), dtype=np.float32)
    for start in range(0, len(rles), batch):
        chunk = rles[start:start + batch]
        for k, rle in enumerate(chunk):
            mask = M.decode(rle)
            h, w = mask.shape
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                continue
            cells = (ys * gh // h) * gw + (xs * gw // w)
            weights = np.bincount(cells, minlength=gh * gw).astype(np.float64)
            v = weights @ flat
            out[start + k] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out
