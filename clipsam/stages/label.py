"""Label stage: every labelling rule, as pure functions of region embeddings, containment parents, a taxonomy,
text embeddings and a :class:`LabelPolicy`. No models and no images: a hand-written similarity matrix tests it.

The text side is any *bank* with ``embed(prompt_sets) -> (M, D)`` unit vectors and a ``logit_scale``
(:class:`~clipsam.labels.TextBank` in the pipeline; a dict of vectors in tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core import masks as M
from ..core.labels import DEFAULT_NEGATIVES, LabelDecision, descend, label_hierarchical, score_flat, softmax
from ..core.taxonomy import Taxonomy, TaxonomyNode
from ..core.tree import depths
from ..errors import PromptError

__all__ = ["LabelPolicy", "Labelled", "drop_nested_same_label", "label_tree", "match_query", "parse_query",
           "resolve_query"]


@dataclass(frozen=True)
class LabelPolicy:
    """The numbers the label rules use (see :class:`~clipsam.Segmenter` for what each means)."""

    negatives: tuple[str, ...] = DEFAULT_NEGATIVES
    min_confidence: float = 0.3
    descend_confidence: float = 0.5
    part_confidence: float = 0.3


@dataclass(frozen=True)
class Labelled:
    """One decision and one kind (``object``, ``part``, ``unknown``, ``unknown part``) per region."""

    decisions: tuple[LabelDecision, ...]
    kinds: tuple[str, ...]

    @classmethod
    def unlabelled(cls, n: int) -> Labelled:
        return cls((LabelDecision(None),) * n, ("unknown",) * n)

    @classmethod
    def from_matches(cls, matched: dict[int, tuple[LabelDecision, str]], n: int) -> Labelled:
        """*n* regions: the matched ones with their decision and kind, the rest unlabelled."""
        none = (LabelDecision(None), "unknown")
        rows = [matched.get(i, none) for i in range(n)]
        return cls(tuple(d for d, _ in rows), tuple(k for _, k in rows))


def label_tree(feats: np.ndarray, parents: np.ndarray, taxonomy: Taxonomy, bank, policy: LabelPolicy, *,
               with_parts: bool = True) -> Labelled:
    """Label regions top-down through the containment tree (every parent before its children).

    Outside labelled objects a region is labelled as an object (or unknown). Inside a labelled object it is labelled
    among that object's parts, unless another top-level category beats every part (an object lying on top of
    another: a cat on a sofa), else it is an ``unknown part``.

    Args:
        feats: ``(N, D)`` unit region embeddings.
        parents: ``(N,)`` parent row of each region, ``-1`` for roots (a forest).
    """
    n = len(feats)
    if n == 0:
        return Labelled((), ())
    objects = label_hierarchical(feats, taxonomy, bank, negatives=policy.negatives,
                                 min_confidence=policy.min_confidence, descend_confidence=policy.descend_confidence)
    decisions: list[LabelDecision] = [LabelDecision(None)] * n
    kinds = ["unknown"] * n
    for i in np.argsort(depths(parents), kind="stable"):  # parents before children
        owner = _owning_object(int(i), parents, kinds)
        if owner is None:
            decisions[i] = objects[i]
            kinds[i] = "object" if objects[i].node is not None else "unknown"
        else:
            decisions[i], kinds[i] = _part_or_object(feats[i:i + 1], decisions[owner], taxonomy, bank, policy,
                                                     with_parts)
    return Labelled(tuple(decisions), tuple(kinds))


def _owning_object(i: int, parents: np.ndarray, kinds: Sequence[str]) -> int | None:
    j = int(parents[i])
    while j >= 0:
        if kinds[j] == "object":
            return j
        j = int(parents[j])
    return None


def _part_or_object(feat: np.ndarray, whole_decision: LabelDecision, taxonomy: Taxonomy, bank, policy: LabelPolicy,
                    with_parts: bool) -> tuple[LabelDecision, str]:
    whole = whole_decision.node
    assert whole is not None  # the owner is a labelled object
    parts = whole.all_parts() if with_parts else []
    rivals = [n for n in taxonomy.top if n.name != whole.path[0]]
    candidates = parts + rivals
    if not candidates:
        return LabelDecision(None), "unknown part"
    text = bank.embed([c.prompts for c in candidates] + [(neg,) for neg in policy.negatives])
    p = softmax(bank.logit_scale * (feat @ text.T))[0]
    k = len(candidates)
    best = int(p[:k].argmax())
    node, node_p = candidates[best], float(p[best])
    if k < len(p) and node_p <= float(p[k:].max()):  # a negative wins (or ties)
        return LabelDecision(None, (), node, node_p), "unknown part"
    if node.is_part:
        if node_p < policy.part_confidence:
            return LabelDecision(None, (), node, node_p), "unknown part"
        owner = node.object_node()
        scores = list(whole_decision.path_scores[:len(owner.path)])
        base = scores[-1] if scores else 1.0
        for depth in range(len(owner.path) + 1, len(node.path)):  # part levels above the chosen one: their subtree
            prefix = node.path[:depth]
            scores.append(base * float(sum(p[j] for j, c in enumerate(candidates) if c.path[:depth] == prefix)))
        scores.append(base * node_p)  # P(whole's path) * P(this part | inside the whole)
        return LabelDecision(node, tuple(scores), node, node_p), "part"
    d = LabelDecision(node, (node_p,), node, node_p)
    if d.score < policy.min_confidence:
        return LabelDecision(None, (), node, d.score), "unknown part"
    return descend(feat, [d], bank, descend_confidence=policy.descend_confidence)[0], "object"


def parse_query(query: str | Sequence[str]) -> list[str]:
    """``"dog, cat"`` or ``["dog", "cat"]`` -> ``["dog", "cat"]`` (trimmed, de-duplicated); empty is an error."""
    if isinstance(query, str):
        terms = [t.strip() for t in query.split(",")]
    elif isinstance(query, Sequence):
        terms = [str(t).strip() for t in query]
    else:
        raise PromptError(f"query must be a string or a list of strings, got {type(query).__name__}")
    terms = [t for t in dict.fromkeys(terms) if t]
    if not terms:
        raise PromptError("the text query is empty: give one or more labels, e.g. 'dog' or 'dog, cat'")
    return terms


def resolve_query(terms: Sequence[str], taxonomy: Taxonomy | None) -> tuple[list[TaxonomyNode], list[str]]:
    """Split query terms into taxonomy nodes they name (``animal``, ``animal/dog``, a synonym) and free text."""
    resolved: list[TaxonomyNode] = []
    free: list[str] = []
    for term in terms:
        hits = taxonomy.find(term) if taxonomy is not None else []
        if hits:
            resolved.extend(hits)
        else:
            free.append(term)
    return resolved, free


def match_query(feats: np.ndarray, parents: np.ndarray, resolved: Sequence[TaxonomyNode], free: Sequence[str],
                bank, policy: LabelPolicy, labelled: Labelled | None = None) -> dict[int, tuple[LabelDecision, str]]:
    """Regions matching a query: ``{row: (decision, kind)}``.

    A region matches a resolved node when its taxonomy label (*labelled*, from :func:`label_tree`) is that node or
    lies below it by is-a. Free-text terms are scored as a flat taxonomy: through the containment rules when the
    query named no taxonomy node, else flat against the negatives.
    """
    matched: dict[int, tuple[LabelDecision, str]] = {}
    if resolved and labelled is not None:
        for i, (d, kind) in enumerate(zip(labelled.decisions, labelled.kinds, strict=True)):
            if d.node is not None and any(d.node.is_a(n) for n in resolved):
                matched[i] = (d, kind)
    if free:
        flat = Taxonomy.from_labels(list(free))
        if not resolved or labelled is None:
            flat_labelled = label_tree(feats, parents, flat, bank, policy, with_parts=False)
            decisions, kinds = flat_labelled.decisions, flat_labelled.kinds
        else:
            decisions = tuple(score_flat(feats, flat.top, bank, negatives=policy.negatives,
                                         min_confidence=policy.min_confidence))
            kinds = labelled.kinds
        for i, d in enumerate(decisions):
            if i not in matched and d.node is not None and (bool(resolved) or kinds[i] == "object"):
                matched[i] = (d, "object")
    return matched


def drop_nested_same_label(rles: Sequence[M.RLE], matched: dict[int, tuple[LabelDecision, str]],
                           containment: float) -> list[int]:
    """Matched rows, minus any region lying inside another matched region with the same label (rows in canonical
    order: larger first)."""
    idx = sorted(matched)
    if len(idx) < 2:
        return idx
    share = M.contained_share([rles[i] for i in idx])
    keep: list[int] = []
    for a, i in enumerate(idx):
        label = matched[i][0].node
        inside = any(share[a, b] >= containment and matched[j][0].node is label
                     for b, j in enumerate(idx[:a]) if j in keep)
        if not inside:
            keep.append(i)
    return keep
