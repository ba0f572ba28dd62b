"""Label stage: every labelling rule, as pure functions of region embeddings, containment parents, a taxonomy,
text embeddings and a :class:`LabelPolicy`. No models and no images: a hand-written similarity matrix tests it.

The text side is any *bank* with ``embed(prompt_sets) -> (M, D)`` unit vectors and a ``logit_scale``
(:class:`~clipsam.labels.TextBank` in the pipeline; a dict of vectors in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core import masks as M
from ..core.labels import (
    DEFAULT_NEGATIVES,
    LabelDecision,
    choose,
    descend,
    label_objects,
    prompt_sets,
    softmax,
    subtree_scores,
)
from ..core.settings import UNION_MARGIN, Settings
from ..core.taxonomy import Taxonomy, TaxonomyNode
from ..core.tree import DEFAULT_CONTAINMENT, depths
from ..core.vocabulary import Entry, competitors, default_vocabulary, normal, query_taxonomy
from ..errors import PromptError

__all__ = ["REST_MIN_SHARE", "UNION_MARGIN", "LabelPolicy", "Labelled", "drop_nested_same_label", "evidence",
           "label_tree", "match_query", "parse_query", "resolve_query"]


#: A labelled region that two labelled regions of different categories inside it cover to at least this share is a
#: *group* (a cat together with the sofa it lies on), not one object: it is unknown, and its members are objects.
#: Two members of one top-level category make a group only when they do not touch (two dogs, not two halves of one).
GROUP_COVER = 0.85
#: Whole or union: the rest of a container outside a related inner region that beats it (its pixels outside that
#: region) below this share of the container adds nothing -- the container is the object, the inner region a piece.
REST_MIN_SHARE = 0.1
#: Two members of a group are two things side by side: they overlap by at most this share of the smaller (a piece of
#: the scooter that a noisy crop calls "laptop" overlaps the scooter's half it is cut from; a cat and its sofa do not).
GROUP_OVERLAP = 0.1
#: With the regions' masks and an embedder, a container is judged by its rest once an inner region beats it on their
#: shared label by more than this (logits); the rest decides, and the margin rule only where the rest cannot tell.
REST_TRIGGER = 0.0
#: A piece of a labelled object (its best label is the object's category) covering the object to this IoU is the same
#: object seen by another mask (SAM's near-duplicates that the nest stage's label-blind 0.9 keeps): it is merged into
#: the object -- not returned -- rather than returned as an ``unknown part`` that is almost all of its parent.
SAME_OBJECT_IOU = 0.8
#: Logits by which another category must beat its owner's own explanation (its category or one of its parts) on a
#: region nested in a labelled object to be a second object lying on it (a cup on a table's mask): the log of the
#: prior odds that a nested region is a piece of its owner (SAM returns a whole, a part and a sub-part for every click,
#: so pieces far outnumber objects lying on objects; e^2 = 7.4 to 1). Chosen from that prior, not fitted.
NESTED_MARGIN = 2.0
#: An unsure region is promoted by its rest only when its largest labelled piece (with the touching pieces of its
#: category) covers this share of it: half of the object, inside SAM's mask of it that may be up to 1/0.8 of its
#: size (a near-duplicate at :data:`SAME_OBJECT_IOU`): 0.5 x 0.8 = 0.4. Halves are cut at half by construction, so a
#: bar of 0.5 let chance decide which side of it a half falls on.
PIECE_COVER = 0.5 * SAME_OBJECT_IOU


@dataclass(frozen=True)
class LabelPolicy:
    """The numbers and choices the label rules use (see :class:`~clipsam.Segmenter` for what each means).

    Attributes:
        scoring: ``subtree`` (CHiLS: one softmax over every label, summed up the tree) or ``top-down``.
        vocabulary: free text (and taxonomy labels) compete against the shipped vocabulary of object and stuff
            nouns, not only against *negatives*.
        union_margin: logits by which a contained region must beat its container on their shared label for the
            container to lose that label (``None``: containers keep their labels).
    """

    negatives: tuple[str, ...] = DEFAULT_NEGATIVES
    min_confidence: float = 0.3
    descend_confidence: float = 0.5
    part_confidence: float = 0.3
    scoring: str = "subtree"
    vocabulary: bool = True
    union_margin: float | None = UNION_MARGIN

    @classmethod
    def of(cls, settings: Settings) -> LabelPolicy:
        """The policy a segmenter's :class:`~clipsam.core.settings.Settings` describe."""
        return cls(settings.negatives, settings.min_confidence, settings.descend_confidence,
                   settings.part_confidence, settings.scoring, settings.vocabulary, settings.union_margin)

    def words(self) -> tuple[Entry, ...]:
        return default_vocabulary() if self.vocabulary else ()

    def competitors(self, taxonomy: Taxonomy, others: Taxonomy | None = None) -> list[tuple[str, ...]]:
        """What *taxonomy*'s labels compete against: the negatives, then (with *vocabulary*) every vocabulary word
        and every label of *others* that *taxonomy* does not name, nor a hypernym or hyponym of one."""
        negatives = prompt_sets(self.negatives)
        if not self.vocabulary:
            return negatives
        return list(dict.fromkeys(negatives + competitors(taxonomy, self.words(), others=others)))


@dataclass(frozen=True)
class Labelled:
    """One decision and one kind (``object``, ``part``, ``unknown``, ``unknown part``) per region; *merged*: rows
    that are near-duplicates of their labelled owner (:data:`SAME_OBJECT_IOU`), not to be returned."""

    decisions: tuple[LabelDecision, ...]
    kinds: tuple[str, ...]
    merged: frozenset[int] = frozenset()

    def kept(self) -> list[int]:
        """The rows to return: all but the merged ones."""
        return [i for i in range(len(self.kinds)) if i not in self.merged]

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
               with_parts: bool = True, competitors: Sequence[tuple[str, ...]] | None = None,
               deep: bool = True, rles: Sequence[M.RLE] | None = None,
               embed: Callable[[Sequence[M.RLE]], np.ndarray] | None = None,
               parts_from: Taxonomy | None = None) -> Labelled:
    """Label regions through the containment tree.

    1. Every region gets an object label on its own (:func:`~clipsam.labels.label_objects`, against
       *competitors*: by default the policy's negatives and vocabulary).
    2. Whole or union. A region inside a labelled region that carries the same label (or one related by is-a) and
       shows it more strongly is either a piece of it (a half of the cat inside the cat) or the object inside a
       union (the cat inside the cat-and-sofa mask). With *rles* and *embed*, the container's *rest* -- its
       pixels outside that region -- decides: too small (:data:`REST_MIN_SHARE`) or the same thing (its own
       category wins the rest's softmax) keeps the container's label; another category or a competitor word (the
       sofa, the floor) makes the container a union, which loses that label and is labelled among the other
       categories. Where the rest cannot tell (nothing reaches ``min_confidence``), or without masks, the inner
       region must show the label ``policy.union_margin`` logits more strongly. With *rles*, a labelled region
       that two labelled regions of different categories inside it cover (:data:`GROUP_COVER`) is a group of
       objects, not an object: it is unknown, and its members are objects; two members of one top-level category
       make a group only when they do not touch (two dogs, not the two halves of one dog).
    3. Bottom-up: an unknown region tiled by touching labelled pieces of mostly one category is that object
       (:func:`_promote`); so is a labelled region that a surer piece of another category covers, when its rest
       shows that category too (:func:`_taken_by_its_piece`); its own crop outvoted, inside an object it is a piece.
    4. Parents before children: outside labelled objects a region keeps its object label (or unknown). Inside a
       labelled object it is scored in one softmax over that object's parts, every category's labels (its own
       included) and the negatives: a named part, or a piece of it (``unknown part``; merged into it when it
       covers it to :data:`SAME_OBJECT_IOU`), unless another category beats both on the region itself by
       :data:`NESTED_MARGIN` logits (an object lying on top of another: a cup on a table's mask); its probability
       then weighs the owner's own category and parts by the same prior odds.
    5. With *rles* and *deep*: an object labelled by its own crop is labelled below its category from its pieces
       too (:func:`_seen_with_its_pieces`: its halves and near-duplicates are more crops of the same thing, averaged
       with its own by their share of its area), and step 4 runs again under the new labels.

    Args:
        feats: ``(N, D)`` unit region embeddings.
        parents: ``(N,)`` parent row of each region, ``-1`` for roots (a forest).
        deep: label below the top level (``False``: top-level labels only, as for free-text queries).
        rles: the regions' masks (for the group rule; without them it is off).
        embed: ``embed(masks) -> (K, D)`` unit embeddings of further masks of the same image (for the rest of a
            container; without it, or without *rles*, the margin rule alone decides).
        parts_from: where a label's parts are looked up by name when *taxonomy* has none (free-text queries: the
            segmenter's taxonomy), for the rest test: a container's own parts are the same thing, not another.
    """
    n = len(feats)
    if n == 0:
        return Labelled((), ())
    comps = policy.competitors(taxonomy) if competitors is None else list(competitors)

    def label(f: np.ndarray, tops: Sequence[TaxonomyNode]) -> list[LabelDecision]:
        return label_objects(f, tops, bank, competitors=comps, scoring=policy.scoring,
                             min_confidence=policy.min_confidence, descend_confidence=policy.descend_confidence,
                             deep=deep)

    objects = first = label(feats, taxonomy.top)
    taken: set[int] = set()  # labelled regions a surer piece of another category took (step 3)
    if policy.union_margin is not None:
        rest = _Rest(rles, embed, taxonomy.top, bank, comps, policy, parts_from) \
            if rles is not None and embed else None
        below = _descendants(parents)  # every region's descendants, once for the three rules
        objects = _resolve_unions(feats, objects, below, bank, policy.union_margin, taxonomy.top,
                                  lambda i, tops: label(feats[i:i + 1], tops)[0], rest)
        if rles is not None:
            ungrouped = _ungroup(objects, rles, parents, below)
            groups = {i for i, (a, b) in enumerate(zip(objects, ungrouped, strict=True)) if a.node and not b.node}
            objects = _promote(ungrouped, rles, parents, below, rest, groups)
            taken = {i for i, (a, b) in enumerate(zip(ungrouped, objects, strict=True))
                     if a.node is not None and b.node is not a.node}

    def assign(objs: list[LabelDecision]) -> Labelled:
        return _assign(objs, feats, parents, taxonomy, bank, policy, with_parts, deep, taken, rles)

    labelled = assign(objects)
    if deep and rles is not None:  # step 5: an object's label below its category from every view of it
        pooled = _seen_with_its_pieces(feats, objects, first, labelled, parents, rles,
                                       lambda f: label(f, taxonomy.top))
        if pooled is not objects:
            labelled = assign(pooled)
    return labelled


def _assign(objects: Sequence[LabelDecision], feats: np.ndarray, parents: np.ndarray, taxonomy: Taxonomy, bank,
            policy: LabelPolicy, with_parts: bool, deep: bool, taken: set[int], rles: Sequence[M.RLE] | None
            ) -> Labelled:
    """Step 4 of :func:`label_tree`: parents before children, each region an object, a part or a piece."""
    n = len(feats)
    decisions: list[LabelDecision] = [LabelDecision(None)] * n
    kinds = ["unknown"] * n
    merged: set[int] = set()
    for i in np.argsort(depths(parents), kind="stable"):  # parents before children
        owner = _owning_object(int(i), parents, kinds)
        if owner is None:
            decisions[i] = objects[i]
            kinds[i] = "object" if objects[i].node is not None else "unknown"
            continue
        decisions[i], kinds[i] = _part_or_object(feats[i:i + 1], decisions[owner], taxonomy, bank, policy,
                                                 with_parts, deep, piece=int(i) in taken)
        piece = kinds[i] == "unknown part" and decisions[i].best_guess is decisions[owner].node
        if piece and rles is not None and _same_object(rles[i], rles[owner]):
            merged.add(int(i))
    return Labelled(tuple(decisions), tuple(kinds), frozenset(merged))


def _seen_with_its_pieces(feats: np.ndarray, objects: list[LabelDecision], first: Sequence[LabelDecision],
                          labelled: Labelled, parents: np.ndarray, rles: Sequence[M.RLE],
                          relabel: Callable[[np.ndarray], list[LabelDecision]]) -> list[LabelDecision]:
    """Step 5 of :func:`label_tree`: SAM returns an object with its halves, quarters and near-duplicates, each a
    crop of the same thing that CLIP sees with its own noise. An object's label below its category is read from all
    of them: its own embedding plus its pieces' (the ``unknown part`` regions inside it whose best label is its own:
    not named parts, which show the part, nor objects lying on it), each weighed by its share of the object's area
    -- multi-crop test-time averaging. Only objects labelled by their own crop (*first*: not unions relabelled,
    nor wholes promoted or taken by their pieces, whose label already comes from them). The category stays the
    object's own decision; a pooled view that leaves it (or matches nothing) changes nothing. Returns *objects*
    itself when nothing changed."""
    decisions, kinds = labelled.decisions, labelled.kinds
    views: dict[int, list[int]] = {}
    for i, kind in enumerate(kinds):
        if kind != "unknown part":
            continue
        o = _owning_object(i, parents, kinds)
        if o is not None and decisions[o] is objects[o] is first[o] and decisions[i].best_guess is decisions[o].node:
            views.setdefault(o, []).append(i)
    if not views:
        return objects
    pooled = np.zeros((len(views), feats.shape[1]), dtype=np.float64)
    for row, (o, pieces) in enumerate(views.items()):
        weights = np.minimum(1.0, M.area([rles[i] for i in pieces]) / max(float(M.area(rles[o])), 1.0))
        pooled[row] = feats[o] + weights @ feats[pieces]
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    out = list(objects)
    for o, d in zip(views, relabel(pooled.astype(feats.dtype)), strict=True):  # one softmax for every object
        if d.node is not None and d.node.path[0] == objects[o].node.path[0]:  # type: ignore[union-attr]
            out[o] = d
    return out if any(a is not b for a, b in zip(out, objects, strict=True)) else objects


def _same_object(inner: M.RLE, owner: M.RLE) -> bool:
    a, b = float(M.area(inner)), float(M.area(owner))
    return a >= SAME_OBJECT_IOU * b and float(M.iou_matrix([inner], [owner])[0, 0]) >= SAME_OBJECT_IOU


def evidence(feats: np.ndarray, node: TaxonomyNode, bank) -> np.ndarray:
    """``(N,)`` how strongly each region shows *node*: the logit (temperature x cosine) of the best-matching label in
    *node*'s is-a subtree (a kitten crop shows "cat" through "kitten")."""
    nodes = [n for n in node.walk() if not n.is_part]
    text = bank.embed([n.prompts for n in nodes])
    return bank.logit_scale * (feats @ text.T).max(axis=1)


def _shared(a: TaxonomyNode | None, b: TaxonomyNode | None) -> TaxonomyNode | None:
    """The shallower of two labels related by is-a, else ``None``."""
    if a is None or b is None:
        return None
    if a.is_a(b):
        return b
    return a if b.is_a(a) else None


def _descendants(parents: np.ndarray) -> list[list[int]]:
    n = len(parents)
    out: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        j, hops = int(parents[i]), 0
        while j >= 0 and hops <= n:
            out[j].append(i)
            j, hops = int(parents[j]), hops + 1
    return out


class _Rest:
    """Step 2's test of what a container adds: ``verdict(p, c, node)`` is ``"same"`` when the pixels of region *p*
    outside region *c* are too few or show *node*'s top-level category (or one of the container's parts) best,
    ``"other"`` when another category or a competitor wins them with ``min_confidence``, else ``None``. One embedding
    per pair asked, cached."""

    def __init__(self, rles: Sequence[M.RLE], embed: Callable[[Sequence[M.RLE]], np.ndarray],
                 tops: Sequence[TaxonomyNode], bank, competitors: Sequence[tuple[str, ...]], policy: LabelPolicy,
                 parts_from: Taxonomy | None = None) -> None:
        self.rles, self.embed, self.tops, self.bank = rles, embed, list(tops), bank
        self.competitors, self.policy, self.parts_from = list(competitors), policy, parts_from
        self._seen: dict[tuple[int, int | tuple[int, ...], str], str | None] = {}

    def verdict(self, p: int, c: int | tuple[int, ...], node: TaxonomyNode, container: TaxonomyNode) -> str | None:
        """*c*: one region inside *p*, or several (their union)."""
        key = (p, c, "/".join(container.path))
        if key not in self._seen:
            self._seen[key] = self._judge(p, c, node, container)
        return self._seen[key]

    def _parts(self, container: TaxonomyNode) -> list[TaxonomyNode]:
        own = container.all_parts()
        if own or self.parts_from is None:
            return own
        return next((parts for n in self.parts_from.find(container.name) if (parts := n.all_parts())), [])

    def _judge(self, p: int, c: int | tuple[int, ...], node: TaxonomyNode, container: TaxonomyNode) -> str | None:
        inner = self.rles[c] if isinstance(c, int) else M.merge([self.rles[i] for i in c])
        rest = M.difference(self.rles[p], inner)
        if M.area(rest) < REST_MIN_SHARE * M.area(self.rles[p]):
            return "same"
        parts = self._parts(container)
        names = {normal(t) for q in parts for t in (q.name, *q.prompts)}
        comps = [c for c in self.competitors if not {normal(t) for t in c} & names]  # its parts are not rivals
        s = subtree_scores(self.embed([rest]), self.tops, self.bank, comps, extra=parts)
        masses = {t.name: float(s.mass[0, s.column(t)]) for t in self.tops}
        own = masses.get(node.path[0], 0.0) + float(s.extra[0].sum())
        other = max([m for name, m in masses.items() if name != node.path[0]] + [float(s.rival[0])])
        if own >= other:
            return "same"
        return "other" if other >= self.policy.min_confidence else None


def _stronger(feats: np.ndarray, p: int, rows: list[int], node: TaxonomyNode, container: TaxonomyNode, bank,
              margin: float, rest: _Rest | None) -> bool:
    """Whether container *p* merely contains *node*, shown by the regions *rows* inside it (see :func:`label_tree`,
    step 2)."""
    ev = evidence(feats[[p, *rows]], node, bank)
    gain = ev[1:] - ev[0]
    best = int(gain.argmax())
    if rest is None or gain[best] <= REST_TRIGGER:
        return bool(gain[best] > margin)
    verdict = rest.verdict(p, rows[best], node, container)
    return verdict == "other" or (verdict is None and bool(gain[best] > margin))


def _resolve_unions(feats: np.ndarray, objects: list[LabelDecision], below: list[list[int]], bank, margin: float,
                    tops: Sequence[TaxonomyNode], relabel, rest: _Rest | None = None) -> list[LabelDecision]:
    """Step 2 of :func:`label_tree`: containers that merely contain a label are labelled without it."""
    out = list(objects)
    for p, inside in enumerate(below):
        excluded: set[str] = set()
        while out[p].node is not None and inside:
            pairs = [(c, _shared(objects[c].node, out[p].node)) for c in inside]
            pairs = [(c, node) for c, node in pairs if node is not None]
            if not pairs:
                break
            stronger = False
            for node in {id(n): n for _, n in pairs}.values():
                rows = [c for c, n in pairs if n is node]
                stronger = stronger or _stronger(feats, p, rows, node, out[p].node, bank, margin, rest)
            if not stronger:
                break
            excluded.add(out[p].node.path[0])
            remaining = [t for t in tops if t.name not in excluded]
            guess = objects[p]
            out[p] = relabel(p, remaining) if remaining else \
                LabelDecision(None, (), guess.best_guess, guess.best_guess_score)
    return out


def _ungroup(objects: list[LabelDecision], rles: Sequence[M.RLE], parents: np.ndarray, below: list[list[int]]
             ) -> list[LabelDecision]:
    """The group rule of :func:`label_tree`: a labelled region is a group, and unknown, when two labelled members of
    different top-level categories, side by side (:data:`GROUP_OVERLAP`), cover it (:data:`GROUP_COVER`: a cat and
    the sofa it lies on), or when its members
    cover it and fall apart into separate clusters that do not touch (two or four dogs; the two halves of one dog
    touch). A region's members are the labelled regions inside it (:data:`~clipsam.core.tree.DEFAULT_CONTAINMENT`
    of their pixels) in no larger one inside it, groups replaced by their own members (smaller regions are decided
    first), and, for the clusters, the unlabelled regions inside it in no larger region inside it but a group (a dog
    too unsure to be labelled is still a dog's mask) -- all by pixels, not by the tree, where a dog shared by two
    overlapping pairs has one parent only."""
    out = list(objects)
    rows = [i for i, d in enumerate(objects) if d.node is not None]
    if not rows:
        return out
    roots = {_root(i, parents) for i in rows}
    others = sorted({u for t in roots for u in [t, *below[t]] if objects[u].node is None})
    every = np.asarray(rows + others, dtype=np.int64)  # labelled first, then the unlabelled under the same roots
    share = M.contained_share([rles[i] for i in every]) >= DEFAULT_CONTAINMENT
    np.fill_diagonal(share, False)
    area = np.asarray(M.area([rles[i] for i in every]), dtype=np.float64)
    labelled = np.arange(len(every)) < len(rows)
    grouped = np.zeros(len(every), dtype=bool)
    for r in np.argsort(area[:len(rows)], kind="stable"):  # inner regions first
        inside = share[:, r] & (area < area[r])
        inner = np.flatnonzero(inside & labelled & ~grouped)
        within = share[np.ix_(inner, inner)] & (area[inner][None, :] > area[inner][:, None])  # c in a larger d
        members = inner[~within.any(axis=1)]
        loose = np.flatnonzero(inside & ~labelled)
        shield = np.flatnonzero(inside & ~grouped)  # a loose region inside one of these is not outermost
        held = share[np.ix_(loose, shield)] & (area[shield][None, :] > area[loose][:, None])
        unlabelled = [int(every[u]) for u in loose[~held.any(axis=1)]]
        if _is_group([int(every[m]) for m in members], unlabelled, int(every[r]), rles, objects):
            grouped[r] = True
            d = objects[every[r]]
            out[every[r]] = LabelDecision(None, (), d.node, d.score)
    return out


def _root(i: int, parents: np.ndarray) -> int:
    while parents[i] >= 0:
        i = int(parents[i])
    return i


def _is_group(members: list[int], unlabelled: list[int], r: int, rles: Sequence[M.RLE],
              objects: Sequence[LabelDecision]) -> bool:
    """Whether region *r* with labelled *members* and *unlabelled* children is a group (see :func:`_ungroup`)."""
    area = np.asarray(M.area([rles[i] for i in [r, *members, *unlabelled]]), dtype=np.float64)
    cover = GROUP_COVER * area[0]
    sizes = dict(zip([*members, *unlabelled], area[1:], strict=True))
    for x, a in enumerate(members):
        for b in members[x + 1:]:
            if objects[a].node.path[0] == objects[b].node.path[0] or sizes[a] + sizes[b] < cover:
                continue
            both = M.area([M.merge([rles[a], rles[b]])])[0]
            overlap = sizes[a] + sizes[b] - both
            if both >= cover and overlap <= GROUP_OVERLAP * min(sizes[a], sizes[b]):
                return True
    parts = [*members, *unlabelled]
    if len(parts) < 2 or sum(sizes.values()) < cover or M.area([M.merge([rles[m] for m in parts])])[0] < cover:
        return False
    cluster = list(range(len(parts)))  # union-find over "touches"

    def find(i: int) -> int:
        while cluster[i] != i:
            i = cluster[i]
        return i

    for x in range(len(parts)):
        for y in range(x + 1, len(parts)):
            if find(x) != find(y) and M.touching(rles[parts[x]], rles[parts[y]]):
                cluster[find(x)] = find(y)
    return len({find(i) for i in range(len(parts))}) >= 2


def _promote(objects: list[LabelDecision], rles: Sequence[M.RLE], parents: np.ndarray, inside: list[list[int]],
             rest: _Rest | None = None, groups: set[int] = frozenset()) -> list[LabelDecision]:  # type: ignore
    """Bottom-up: an unknown region that labelled pieces tile -- two or more outermost labelled regions inside it (in
    the tree), covering :data:`GROUP_COVER` of it and touching one another into one cluster (the halves of a cup
    whose whole crop was unsure) -- is an object when one top-level category holds most of the pieces' area (a
    noisy piece that says "laptop" among the halves of a scooter does not veto it). Its label is the deepest label
    the majority's pieces share, each path score the smallest of theirs. Groups (separate clusters) are never
    promoted; nor are unions, whose other member is another category of comparable area. With *rest*, an unknown
    region whose largest labelled piece, with the pieces of its category touching it, covers :data:`PIECE_COVER`,
    and whose rest (its pixels outside them) touches them and shows the same thing, is their object too (a cup whose
    whole crop was unsure and of which SAM gave one half; SAM's slightly larger mask of a dog with a half and a
    quarter of it labelled) -- see :func:`_by_its_rest`."""
    out = list(objects)
    for r, below in enumerate(inside):
        if not below or r in groups:  # groups found by _ungroup stay groups
            continue
        if objects[r].node is not None:
            out[r] = _taken_by_its_piece(r, below, objects, parents, rest, rles) or out[r]
            continue
        members = [c for c in below if objects[c].node is not None and _outermost(c, r, parents, objects)]
        if not members:
            continue
        area = np.asarray(M.area([rles[i] for i in [r, *members]]), dtype=np.float64)
        if area[1:].sum() < GROUP_COVER * area[0] or \
                M.area([M.merge([rles[m] for m in members])])[0] < GROUP_COVER * area[0]:
            out[r] = _by_its_rest(r, members, area, objects, rest, rles) or out[r]
            continue
        if _is_group(members, [], r, rles, objects):
            continue
        by_top: dict[str, float] = {}
        for c, a in zip(members, area[1:], strict=True):
            by_top[objects[c].node.path[0]] = by_top.get(objects[c].node.path[0], 0.0) + a
        top, held = max(by_top.items(), key=lambda kv: kv[1])
        majority = [c for c in members if objects[c].node.path[0] == top]
        if held < 0.5 * area[1:].sum() or len(majority) < 2:
            continue
        node = objects[majority[0]].node
        for c in majority[1:]:
            node = _shared(node, objects[c].node) or _common(node, objects[c].node)
        scores = tuple(min(objects[c].path_scores[k] for c in majority) for k in range(len(node.path)))
        out[r] = LabelDecision(node, scores, node, scores[0])
    return out


def _by_its_rest(r: int, members: list[int], area: np.ndarray, objects: Sequence[LabelDecision], rest: _Rest | None,
                 rles: Sequence[M.RLE]) -> LabelDecision | None:
    """Region *r*'s label from its largest labelled piece and the pieces of its category that touch it (one cluster),
    when together they cover :data:`PIECE_COVER` of it and *r*'s rest touches them and shows the same thing (see
    :func:`_promote`), else ``None``. A rest that lies apart from them is a second thing beside them -- SAM's mask of
    two glasses, one of them too unsure to be labelled -- not the rest of one."""
    k = int(np.argmax(area[1:]))
    if rest is None:
        return None
    cluster = _touching_cluster(members[k], [m for m in members if objects[m].node.path[0] ==
                                             objects[members[k]].node.path[0]], rles)
    covered = M.merge([rles[c] for c in cluster]) if len(cluster) > 1 else rles[members[k]]
    if M.area(covered) < PIECE_COVER * area[0]:
        return None
    node = objects[cluster[0]].node
    for c in cluster[1:]:
        node = _shared(node, objects[c].node) or _common(node, objects[c].node)
    if rest.verdict(r, cluster[0] if len(cluster) == 1 else tuple(cluster), node, node) != "same":
        return None
    outside = M.difference(rles[r], covered)
    if M.area(outside) and not M.touching(outside, covered):
        return None
    scores = tuple(min(objects[c].path_scores[j] for c in cluster) for j in range(len(node.path)))
    return LabelDecision(node, scores, node, scores[0])


def _taken_by_its_piece(r: int, below: list[int], objects: Sequence[LabelDecision], parents: np.ndarray,
                        rest: _Rest | None, rles: Sequence[M.RLE]) -> LabelDecision | None:
    """A labelled region that a surer labelled region of another category inside it covers (:data:`PIECE_COVER`,
    with the touching pieces of its category), and whose rest shows that category too, is of that category: a half
    of a scooter whose noisy crop says "laptop", with the scooter's wheel labelled inside it. Its rest decides, as for
    an unknown region (:func:`_by_its_rest`): a sofa's mask around the cat lying on it keeps "couch", since its rest
    is the sofa."""
    if rest is None:
        return None
    top, sure = objects[r].node.path[0], objects[r].path_scores[0]
    members = [c for c in below if objects[c].node is not None and objects[c].node.path[0] != top
               and objects[c].path_scores[0] > sure and _outermost(c, r, parents, objects)]
    if not members:
        return None
    area = np.asarray(M.area([rles[i] for i in [r, *members]]), dtype=np.float64)
    return _by_its_rest(r, members, area, objects, rest, rles)


def _touching_cluster(seed: int, candidates: list[int], rles: Sequence[M.RLE]) -> list[int]:
    """*seed* and the *candidates* that touch it, directly or through one another (sorted, *seed* first)."""
    cluster, left = [seed], [c for c in candidates if c != seed]
    grew = True
    while grew and left:
        grew = False
        for c in list(left):
            if any(M.touching(rles[c], rles[m]) for m in cluster):
                cluster.append(c)
                left.remove(c)
                grew = True
    return [seed, *sorted(cluster[1:])]


def _common(a: TaxonomyNode, b: TaxonomyNode) -> TaxonomyNode:
    """The deepest is-a ancestor two labels of one top-level category share."""
    while not b.is_a(a):
        a = a.parent
    return a


def _outermost(c: int, r: int, parents: np.ndarray, objects: Sequence[LabelDecision]) -> bool:
    """Whether no labelled region lies between *c* and its ancestor *r*."""
    j = int(parents[c])
    while j >= 0 and j != r:
        if objects[j].node is not None:
            return False
        j = int(parents[j])
    return True


def _owning_object(i: int, parents: np.ndarray, kinds: Sequence[str]) -> int | None:
    j = int(parents[i])
    while j >= 0:
        if kinds[j] == "object":
            return j
        j = int(parents[j])
    return None


def _part_or_object(feat: np.ndarray, whole_decision: LabelDecision, taxonomy: Taxonomy, bank, policy: LabelPolicy,
                    with_parts: bool, deep: bool, piece: bool = False) -> tuple[LabelDecision, str]:
    """A region inside a labelled object: one of its parts, a piece of it (``unknown part``), or another object lying
    on it. One softmax over the object's parts, every category's labels -- the object's own category included --
    and the negatives: a probability is only meaningful over the full set of candidates. A piece whose best label is
    its owner's category (a half of a cat) is never renamed by taking that category out and renormalising the rest;
    another category wins only by beating the owner's category and every part on the region itself by
    :data:`NESTED_MARGIN` logits, and its score (and its ``min_confidence`` test) is its share once the owner's
    mass is weighed by those same prior odds. *piece*: the region's own crop was outvoted by a surer piece of it and
    its rest (step 3 of :func:`label_tree`), so no other category is read from it: a piece of its owner, as the prior
    says a nested region is."""
    whole = whole_decision.node
    assert whole is not None  # the owner is a labelled object
    parts = whole.all_parts() if with_parts else []
    own = next(t for t in taxonomy.top if t.name == whole.path[0])
    rivals = [n for n in taxonomy.top if n is not own]
    if policy.scoring == "subtree":  # parts, every category's labels and negatives in one softmax
        s = subtree_scores(feat, [*rivals, own], bank, policy.negatives, extra=parts)
        part_p, negative = s.extra[0], float(s.rival[0])
        rival_best = np.asarray([s.prob[0, s.subtree(t)].max() for t in rivals])  # a rival's best label
        rival_mass = np.asarray([s.mass[0, s.column(t)] for t in rivals])
        own_best = float(s.prob[0, s.subtree(own)].max())
        own_mass = float(s.mass[0, s.column(own)])
    else:  # top-down: categories by their top-level names
        text = bank.embed([c.prompts for c in [*parts, *rivals, own]] + prompt_sets(policy.negatives))
        p = softmax(bank.logit_scale * (feat @ text.T))[0]
        part_p, rival_mass = p[:len(parts)], p[len(parts):len(parts) + len(rivals)]
        rival_best, own_best = rival_mass, float(p[len(parts) + len(rivals)])
        own_mass = own_best
        negative = float(p[len(parts) + len(rivals) + 1:].max()) if len(p) > len(parts) + len(rivals) + 1 else 0.0
    best_part = int(part_p.argmax()) if len(parts) else -1
    best_rival = int(rival_best.argmax()) if rivals else -1
    part_score = float(part_p[best_part]) if best_part >= 0 else -1.0
    rival_score = float(rival_best[best_rival]) if best_rival >= 0 else -1.0
    if piece or rival_score < max(part_score, own_best) * np.exp(NESTED_MARGIN):  # pieces of their owner
        if part_score >= own_best:  # a named part of its owner, sure of it as far as it is inside its owner
            inside = float(part_p.sum()) + own_mass
            return _part_decision(parts[best_part], part_score, part_p, parts, negative, whole_decision, policy,
                                  inside)
        return LabelDecision(None, (), whole, own_best), "unknown part"  # a piece: a half, a pair of parts, a sliver
    # The same prior odds in the probability: the owner's explanation (its category and parts) weighed by
    # e^NESTED_MARGIN, so a rival that barely clears the margin is not reported as sure of itself.
    prior = 1.0 + (np.exp(NESTED_MARGIN) - 1.0) * (own_mass + float(np.sum(part_p)))
    top, top_mass = rivals[best_rival], float(rival_mass[best_rival]) / prior
    if rival_score <= negative or top_mass < policy.min_confidence:
        return LabelDecision(None, (), top, top_mass), "unknown part"
    if policy.scoring == "subtree":
        d = choose(s, 0, [top], min_confidence=0.0, descend_confidence=policy.descend_confidence, deep=deep)
    else:
        d = LabelDecision(top, (top_mass * prior,), top, top_mass * prior)
        d = descend(feat, [d], bank, descend_confidence=policy.descend_confidence)[0] if deep else d
    if d.node is None:
        return LabelDecision(None, (), top, top_mass), "unknown part"
    return LabelDecision(d.node, tuple(p / prior for p in d.path_scores), top, top_mass), "object"


def _part_decision(node: TaxonomyNode, node_p: float, part_p: np.ndarray, parts: Sequence[TaxonomyNode],
                   negative: float, whole_decision: LabelDecision, policy: LabelPolicy, inside: float = 1.0
                   ) -> tuple[LabelDecision, str]:
    """The part *node* (probability *node_p* in the region's softmax), or ``unknown part`` when a negative wins or it
    is too unsure. Its confidence is conditional on the region being inside its owner (the decision already made:
    *inside* is the softmax mass of the owner's parts and category), so that labels of other categories, each too
    weak to claim the region, do not dilute it. Path scores: the whole's path, then each part level's subtree times
    the whole's score."""
    if node_p <= negative:
        return LabelDecision(None, (), node, node_p), "unknown part"
    node_p, part_p = node_p / max(inside, 1e-12), part_p / max(inside, 1e-12)
    if node_p < policy.part_confidence:
        return LabelDecision(None, (), node, node_p), "unknown part"
    owner = node.object_node()
    scores = list(whole_decision.path_scores[:len(owner.path)])
    base = scores[-1] if scores else 1.0
    for depth in range(len(owner.path) + 1, len(node.path)):  # part levels above the chosen one: their subtree
        prefix = node.path[:depth]
        scores.append(base * float(sum(part_p[j] for j, c in enumerate(parts) if c.path[:depth] == prefix)))
    scores.append(base * node_p)  # P(whole's path) * P(this part | inside the whole)
    return LabelDecision(node, tuple(scores), node, node_p), "part"


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
    """Split query terms into taxonomy nodes they name (``animal``, ``animal/dog``, a synonym) and free text.

    Raises:
        PromptError: a free-text term holds ``/`` (it separates label paths, so it only names a taxonomy path),
            before any model runs.
    """
    resolved: list[TaxonomyNode] = []
    free: list[str] = []
    for term in terms:
        hits = taxonomy.find(term) if taxonomy is not None else []
        if hits:
            resolved.extend(hits)
        elif "/" in term:
            where = f"no label path of taxonomy {taxonomy.name!r}" if taxonomy is not None else "no taxonomy is given"
            raise PromptError(f"query {term!r}: '/' separates label paths (animal/dog), but {where}; write free "
                              "text without '/'")
        else:
            free.append(term)
    return resolved, free


def match_query(feats: np.ndarray, parents: np.ndarray, resolved: Sequence[TaxonomyNode], free: Sequence[str],
                bank, policy: LabelPolicy, labelled: Labelled | None = None, taxonomy: Taxonomy | None = None,
                rles: Sequence[M.RLE] | None = None, embed: Callable[[Sequence[M.RLE]], np.ndarray] | None = None
                ) -> dict[int, tuple[LabelDecision, str]]:
    """Regions matching a query: ``{row: (decision, kind)}``.

    A region matches a resolved node when its taxonomy label (*labelled*, from :func:`label_tree`) is that node or
    lies below it by is-a. Free-text terms compete against the negatives, the vocabulary (their own synonyms,
    hypernyms and hyponyms excepted; hyponyms count for the term) and *taxonomy*'s labels: through the
    containment rules when the query named no taxonomy node, else region by region.
    """
    matched: dict[int, tuple[LabelDecision, str]] = {}
    if resolved and labelled is not None:
        for i, (d, kind) in enumerate(zip(labelled.decisions, labelled.kinds, strict=True)):
            if d.node is not None and any(d.node.is_a(n) for n in resolved):
                matched[i] = (d, kind)
    if free:
        flat = query_taxonomy(list(free), policy.words())
        comps = policy.competitors(flat, others=taxonomy)
        if not resolved or labelled is None:
            flat_labelled = label_tree(feats, parents, flat, bank, policy, with_parts=False, competitors=comps,
                                       deep=False, rles=rles, embed=embed, parts_from=taxonomy)
            decisions, kinds = flat_labelled.decisions, flat_labelled.kinds
        else:
            decisions = tuple(label_objects(feats, flat.top, bank, competitors=comps, scoring=policy.scoring,
                                            min_confidence=policy.min_confidence, deep=False))
            kinds = labelled.kinds
        for i, d in enumerate(decisions):
            if i not in matched and d.node is not None and (bool(resolved) or kinds[i] == "object"):
                matched[i] = (d, "object")
    return matched


def drop_nested_same_label(rles: Sequence[M.RLE], matched: dict[int, tuple[LabelDecision, str]],
                           containment: float) -> list[int]:
    """Matched rows, minus any region lying inside another matched region with the same label or one related by is-a
    (rows in canonical order: larger first). The whole represents the object; a container that merely contained
    the label has already lost it in :func:`label_tree`."""
    idx = sorted(matched)
    if len(idx) < 2:
        return idx
    share = M.contained_share([rles[i] for i in idx])
    keep: list[int] = []
    for a, i in enumerate(idx):
        label = matched[i][0].node
        inside = any(share[a, b] >= containment and _related(matched[j][0].node, label)
                     for b, j in enumerate(idx[:a]) if j in keep)
        if not inside:
            keep.append(i)
    return keep


def _related(a: TaxonomyNode | None, b: TaxonomyNode | None) -> bool:
    return a is not None and b is not None and (a.is_a(b) or b.is_a(a))
