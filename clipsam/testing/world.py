"""A CLIP-like test world: scenes, a SAM-like proposer and an embedder whose similarities follow CLIP's statistics.

The exact oracle (:mod:`clipsam.testing.oracle`) gives one-hot embeddings, which hide calibration bugs: any rule
works when a cat crop is 100 % "cat". Real CLIP is soft, and this world is too:

* every concept (each label of ``everyday`` and ``stuff``, each negative, any other word on demand) is a random
  unit vector in a few hundred dimensions; a word mixes in its hypernym's vector, so related words are close
  (cat and dog share "animal"), and superclass names match their members' crops only weakly -- COCO's abstract
  supercategories ("outdoor", "accessory", "kitchen") more weakly still;
* all texts share one large common direction, and crops share part of it, so that an unrelated crop-text pair
  has a cosine around 0.17 and a matched pair around 0.30, as with ViT-B/16;
* a crop's vector mixes the concepts of the pixels it shows, by pixel share (a cat on a sofa looks partly like
  both; a dog's head partly like a dog), plus a large crop-specific random part (crop-to-crop noise: about 0.025
  in cosine, 2.5 logits at CLIP's temperature of 100) and an image-only component (CLIP's modality gap);
* a word the world has never seen gets its own vector; an unseen phrase ending in a known word ("striped cat")
  lies near that word.

:class:`SAMLikeProposer` proposes what SAM proposes: every object and part, background slabs, unions of an
object with what it lies on, halves, and near-duplicates. :class:`SAM3LikeProposer` answers noun phrases as SAM 3
does: every instance of the phrase or of a kind of it, scored by how close the phrase is to what it shows. Every
draw is seeded: a world is a function of its seed, a scene of the world and its index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import masks as M
from ..core.labels import DEFAULT_NEGATIVES, DEFAULT_TEMPLATES
from ..core.taxonomy import Taxonomy, TaxonomyNode, load_taxonomy
from ..core.vocabulary import normal
from ..models.base import ConceptHit, PromptMasks, Proposal

__all__ = ["CLIPLikeEmbedder", "CLIPLikeWorld", "Instance", "SAM3LikeProposer", "SAMLikeProposer", "WorldParams",
           "WorldScene",
           "absent_term", "basic_terms", "level_hits", "object_crops", "pooled_agreement", "query_counts",
           "template_label"]

#: COCO supercategories that name no visual kind: CLIP matches their members' crops very weakly.
ABSTRACT = frozenset({"outdoor", "accessory", "sports", "kitchen", "indoor", "electronic", "appliance"})
#: Objects that other objects lie on (a cat on a sofa, a bottle on a table).
SUPPORTS = ("furniture/couch", "furniture/bed", "furniture/dining table", "outdoor/bench")
#: Objects small enough to lie on a support.
SMALL = ("animal/cat", "animal/dog", "kitchen/bottle", "kitchen/cup", "electronic/laptop", "indoor/book",
         "indoor/teddy bear", "accessory/backpack", "food/pizza", "kitchen/bowl")
#: Background slabs: (upper, lower) stuff of a scene.
SLABS = (("wall", "floor"), ("sky", "grass"), ("wall", "carpet"), ("sky", "road"), ("building", "pavement"))
#: Smallest visible instance kept as ground truth (pixels).
_MIN_PIXELS = 30


@dataclass(frozen=True)
class WorldParams:
    """The statistics the world reproduces, each with its reason.

    Attributes:
        dim: embedding width (ViT-B/16: 512).
        logit_scale: CLIP's learned temperature (100).
        text_common: weight of the direction all texts share ("a photo of …"); sets the cosine of unrelated pairs.
        text_noise: per-sentence noise: synonyms and templates differ a little (ensembles average it out).
        hypernym: how much of its hypernym a word carries (cat-dog cosine about 0.17).
        abstract_hypernym: the same for COCO's abstract supercategories (outdoor, accessory …): weaker.
        subtype: how much of its parent a subtype carries (a kitten looks much like a cat).
        part_owner: how much of its whole a part's look carries (a dog's head is partly "dog").
        image_common: crops' share of the common direction (unrelated cosine about 0.17).
        concept: crops' weight of what they show (matched cosine about 0.30).
        crop_noise: crop-specific random part (about 0.025 cosine of noise per text).
        unseen_head: how much an unseen phrase carries of the known word it ends with ("striped cat": cat).
        copies: instances of one basic-level category in every scene (1: none repeated; 2 or 4: two or four dogs,
            or a dog and puppies); SAM also proposes each pair of them and the whole group.
        pieces: pieces SAM proposes for every object (0: SAM's usual -- a half of some objects and a near-duplicate
            of some; 3 or more: a scene where most proposals are pieces -- halves, quarters, strips, the object
            without its parts).
    """

    dim: int = 512
    logit_scale: float = 100.0
    text_common: float = 1.2
    text_noise: float = 0.35
    hypernym: float = 0.45
    abstract_hypernym: float = 0.15
    subtype: float = 0.8
    part_owner: float = 0.5
    image_common: float = 0.224
    concept: float = 0.206
    crop_noise: float = 0.57
    unseen_head: float = 1.0
    copies: int = 1
    pieces: int = 0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Instance:
    """One true region of a scene.

    Attributes:
        path: its label path in ``everyday`` (``("animal", "cat")``; a part ``("animal", "cat", "head")``); a
            background slab's path is its stuff name (``("wall",)``), and its kind ``stuff``.
        kind: ``object``, ``part`` or ``stuff``.
        parent: index of the instance it is part of, or lies on (a cat on a sofa), else ``None``.
    """

    path: tuple[str, ...]
    kind: str
    rle: M.RLE = field(repr=False)
    parent: int | None = None

    @property
    def name(self) -> str:
        return self.path[-1]


@dataclass(frozen=True)
class WorldScene:
    """A painted scene: pixel classes with unique colours, and the true instances."""

    image: np.ndarray
    instances: tuple[Instance, ...]
    colours: np.ndarray = field(repr=False)  # (K, 3) one colour per pixel class
    concepts: tuple[str, ...] = field(repr=False)  # the concept key each pixel class shows
    seed: int = 0
    unions: tuple[M.RLE, ...] = field(default=(), repr=False)  # (object ∪ what it lies on) masks
    groups: tuple[M.RLE, ...] = field(default=(), repr=False)  # unions of instances of one category (pairs, all)

    def objects(self) -> list[int]:
        return [i for i, s in enumerate(self.instances) if s.kind == "object"]


class CLIPLikeWorld:
    """Concept vectors, scenes, a proposer and an embedder, all drawn from *seed*.

    Example::

        world = CLIPLikeWorld(seed=3)
        scene = world.scene(0)
        seg = world.segmenter(scene).segment(scene.image, "cat")
    """

    def __init__(self, seed: int = 0, params: WorldParams | None = None, taxonomy: str | Taxonomy = "everyday"
                 ) -> None:
        self.seed = seed
        self.params = params or WorldParams()
        self.taxonomy = load_taxonomy(taxonomy)
        self._vectors: dict[str, np.ndarray] = {}  # taxonomy paths, and normalised words
        self._alias: dict[str, str] = {}  # a name or synonym -> the key of its vector
        self._texts: dict[str, np.ndarray] = {}
        p, rng = self.params, np.random.default_rng(seed)
        # axis 0: the image-only direction (modality gap); axis 1: the direction all texts share
        self._common = np.zeros(p.dim)
        self._common[1] = 1.0
        for node in self.taxonomy:  # pre-order: parents before children
            key = self._key(node)
            self._vectors[key] = self._node_vector(node, rng)
            names = (f"{node.object_node().name} {node.name}",) if node.is_part else (node.name, *node.prompts)
            for t in names:
                self._alias.setdefault(normal(t), key)
        for node in load_taxonomy("stuff"):
            key = normal(node.name)
            if key not in self._alias:
                self._vectors[key] = self._random(rng)
                for t in node.prompts:
                    self._alias.setdefault(normal(t), key)
        for word in DEFAULT_NEGATIVES:
            self.vector(word)
        self.embedder = CLIPLikeEmbedder(self)
        self.proposer = SAMLikeProposer(pieces=self.params.pieces)

    # -- concepts ----------------------------------------------------------------------------------------
    @staticmethod
    def _key(node: TaxonomyNode) -> str:
        return "/".join(node.path)

    def _random(self, rng: np.random.Generator) -> np.ndarray:
        v = rng.standard_normal(self.params.dim)
        v[:2] = 0.0
        return _unit(v)

    def _node_vector(self, node: TaxonomyNode, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        own = self._random(rng)
        parent = node.parent
        if parent is None or not parent.path:
            return own
        up = self._vectors[self._key(parent)]
        if node.is_part:  # a part: the look all parts of that name share, its own, and some of its whole's
            return _unit(self.vector(node.name) + 0.35 * own + p.part_owner * up)
        if len(parent.path) >= 2:
            weight = p.subtype
        else:
            weight = p.abstract_hypernym if parent.path[0] in ABSTRACT else p.hypernym
        return _unit(own + weight * up)

    def vector(self, word: str) -> np.ndarray:
        """The concept vector of a taxonomy path or of any word or phrase (drawn on first use): a synonym lies
        near its label, an unseen phrase near the known words it ends with."""
        key = word if "/" in word else normal(word)
        if key in self._vectors:
            return self._vectors[key]
        own = self._random(np.random.default_rng(_digest(self.seed, "word", key)))
        if key in self._alias and self._alias[key] in self._vectors:
            vec = _unit(self._vectors[self._alias[key]] + 0.15 * own)
        else:
            words = key.split(" ")
            tails = [" ".join(words[i:]) for i in range(1, len(words))]
            head = next((t for t in tails if t in self._vectors or t in self._alias), None)
            vec = _unit(own + self.params.unseen_head * self.vector(head)) if head else own
        self._vectors[key] = vec
        return vec

    def text_vector(self, text: str) -> np.ndarray:
        """A sentence's embedding: the common direction, its label's concept, and sentence noise."""
        if text not in self._texts:
            p = self.params
            label = template_label(text.lower()) or text
            noise = self._random(np.random.default_rng(_digest(self.seed, "text", text)))
            self._texts[text] = _unit(p.text_common * self._common + self.vector(label) + p.text_noise * noise)
        return self._texts[text]

    # -- scenes ------------------------------------------------------------------------------------------
    def scene(self, index: int, height: int = 192, width: int = 256, n_objects: int = 4) -> WorldScene:
        """Scene *index*: two background slabs, *n_objects* objects (in most scenes one lies on a support: a cat on
        a sofa), and up to two parts of each object that has parts."""
        rng = np.random.default_rng(_digest(self.seed, "scene", index))
        h, w = height, width
        upper, lower = SLABS[int(rng.integers(len(SLABS)))]
        labels = np.zeros((h, w), dtype=np.int32)  # the pixel class of every pixel
        labels[int(h * rng.uniform(0.4, 0.6)):] = 1
        concepts: list[str] = [normal(upper), normal(lower)]
        yy, xx = np.mgrid[:h, :w]
        boxes: list[tuple[float, float, float, float]] = []
        drawn: list[tuple[TaxonomyNode, int | None, list[int], list[tuple[TaxonomyNode, int]]]] = []
        picked = self._pick_objects(rng, n_objects)
        scale = 0.7 if self.params.copies > 1 else 1.0  # room for the copies
        for node, support in picked:
            if support is None:
                cy, cx, ry, rx = self._place(rng, h, w, boxes, scale)
            else:  # lying on its support, over the support's upper half
                scy, scx, sry, srx = boxes[support]
                ry, rx = sry * rng.uniform(0.35, 0.5), srx * rng.uniform(0.3, 0.45)
                cy, cx = scy - sry * 0.3, scx + rng.uniform(-0.3, 0.3) * srx
            boxes.append((cy, cx, ry, rx))
            if rng.random() < 0.5:
                shape = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0
            else:
                shape = (np.abs(yy + 0.5 - cy) <= ry) & (np.abs(xx + 0.5 - cx) <= rx)
            body = len(concepts)
            concepts.append(self._key(node))
            labels[shape] = body
            parts = [q for q in node.all_parts() if q.parent is not None and not q.parent.is_part]
            rng.shuffle(parts)  # type: ignore[arg-type]
            painted: list[tuple[TaxonomyNode, int]] = []
            for part in parts[:2]:
                ang = rng.uniform(0, 2 * np.pi)
                py, px, pr = cy + 0.55 * ry * np.sin(ang), cx + 0.55 * rx * np.cos(ang), rng.uniform(0.25, 0.35)
                pmask = shape & ((((yy + 0.5 - py) / (pr * ry)) ** 2 + ((xx + 0.5 - px) / (pr * rx)) ** 2) <= 1.0)
                concepts.append(self._key(part))
                labels[pmask] = len(concepts) - 1
                painted.append((part, len(concepts) - 1))
            drawn.append((node, support, [body], painted))
        instances: list[Instance] = []
        unions: list[M.RLE] = []
        row_of: dict[int, int] = {}
        for k, (node, support, body, painted) in enumerate(drawn):
            visible = np.isin(labels, body + [c for _, c in painted])  # what later objects left of it
            if visible.sum() < _MIN_PIXELS:
                continue
            row_of[k] = len(instances)
            instances.append(Instance(node.path, "object", M.encode(visible), row_of.get(support)))  # type: ignore
            if support is not None and support in row_of:
                unions.append(M.merge([M.encode(visible), instances[row_of[support]].rle]))
            for part, c in painted:
                if (labels == c).sum() >= _MIN_PIXELS:
                    instances.append(Instance(part.path, "part", M.encode(labels == c), row_of[k]))  # type: ignore
        for k, stuff in enumerate((upper, lower)):
            if (labels == k).sum() >= _MIN_PIXELS:
                instances.append(Instance((stuff,), "stuff", M.encode(labels == k)))  # type: ignore[arg-type]
        palette = _palette(len(concepts))
        return WorldScene(image=palette[labels].astype(np.uint8), instances=tuple(instances), colours=palette,
                          concepts=tuple(concepts), seed=_digest(self.seed, "scene", index), unions=tuple(unions),
                          groups=_groups(instances))

    def _pick_objects(self, rng: np.random.Generator, n: int) -> list[tuple[TaxonomyNode, int | None]]:
        """*n* object labels (basic-level or below), one on a support when a support is drawn."""
        pool = [node for node in self.taxonomy if not node.is_part and len(node.path) >= 2]
        out: list[tuple[TaxonomyNode, int | None]] = []
        if rng.random() < 0.7:
            support = self.taxonomy.get(SUPPORTS[int(rng.integers(len(SUPPORTS)))])
            out.append((support, None))
            small = self.taxonomy.get(SMALL[int(rng.integers(len(SMALL)))])
            below = [small, *[c for c in small.walk() if not c.is_part and c is not small]]
            out.append((below[int(rng.integers(len(below)))], 0))
        copies = self.params.copies
        while len(out) < (n if copies <= 1 else max(len(out), n - 1)):
            node = pool[int(rng.integers(len(pool)))]
            if all(node.path[:2] != o.path[:2] for o, _ in out):
                out.append((node, None))
        while copies > 1:  # one basic-level category, *copies* times (a dog and a puppy count as two dogs)
            node = pool[int(rng.integers(len(pool)))]
            if all(node.path[:2] != o.path[:2] for o, _ in out):
                basic = self.taxonomy.get(node.path[:2])
                family = [c for c in basic.walk() if not c.is_part]
                out += [(family[int(rng.integers(len(family)))], None) for _ in range(copies)]
                break
        return out

    @staticmethod
    def _place(rng: np.random.Generator, h: int, w: int, boxes: list, scale: float = 1.0
               ) -> tuple[float, float, float, float]:
        for _ in range(50):
            ry, rx = h * rng.uniform(0.12, 0.22) * scale, w * rng.uniform(0.1, 0.18) * scale
            cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
            if all(abs(cy - by) > ry + bry or abs(cx - bx) > rx + brx for by, bx, bry, brx in boxes):
                return cy, cx, ry, rx
        return cy, cx, ry, rx

    def node_for(self, phrase: str) -> TaxonomyNode | None:
        """The taxonomy label a phrase names (a name, a synonym, or a part's ``"<whole> <part>"``), if any."""
        key = self._alias.get(normal(phrase))
        found = self.taxonomy.find(key) if key else []
        return found[0] if found else None

    def segmenter(self, scene: WorldScene, *, concepts: bool = False, **kwargs: Any):
        """A :class:`~clipsam.Segmenter` on this world's proposer and embedder, showing *scene* (the text bank
        is shared across scenes: texts do not depend on the scene). With *concepts*, the proposer is the
        SAM 3-like one, completed by the SAM-like one (``unknown_sam``)."""
        from ..segmenter import Segmenter

        self.embedder.scene = self.proposer.scene = scene
        if concepts:
            concept = SAM3LikeProposer(self)
            concept.scene = scene
            kwargs.setdefault("taxonomy", self.taxonomy)
            kwargs.setdefault("text_cache", False)
            kwargs.setdefault("unknown_sam", self.proposer)
            return Segmenter.from_models(concept, self.embedder, **kwargs)
        kwargs.setdefault("taxonomy", self.taxonomy)
        kwargs.setdefault("text_cache", False)
        seg = Segmenter.from_models(self.proposer, self.embedder, **kwargs)
        return seg


def _groups(instances: Sequence[Instance]) -> tuple[M.RLE, ...]:
    """SAM's masks of several instances of one basic-level category: each pair of neighbours in drawing order,
    and all of them when there are more than two."""
    by_basic: dict[tuple[str, ...], list[M.RLE]] = {}
    for s in instances:
        if s.kind == "object" and len(s.path) >= 2:
            by_basic.setdefault(s.path[:2], []).append(s.rle)
    out: list[M.RLE] = []
    for rles in by_basic.values():
        out += [M.merge([a, b]) for a, b in zip(rles, rles[1:], strict=False)]
        if len(rles) > 2:
            out.append(M.merge(rles))
    return tuple(out)


def _palette(n: int) -> np.ndarray:
    """*n* well-separated colours, none near CLIP's mean grey (the crop fill)."""
    levels = (20, 90, 160, 235)
    grid = [(r, g, b) for r in levels for g in levels for b in levels
            if abs(r - 122) + abs(g - 116) + abs(b - 104) > 90]
    if n > len(grid):
        raise ValueError(f"a scene may hold at most {len(grid)} pixel classes, got {n}")
    return np.asarray(grid[:n], dtype=np.int32)


def template_label(text: str) -> str | None:
    """The label in a prompt made from one of clipsam's default templates, or ``None``."""
    for template in DEFAULT_TEMPLATES:
        head, _, tail = template.lower().partition("{}")
        for h in (head, head[:-2] + "an " if head.endswith("a ") else head):
            if text.startswith(h) and text.endswith(tail) and len(text) > len(h) + len(tail):
                return text[len(h):len(text) - len(tail)]
    return None


class CLIPLikeEmbedder:
    """A :class:`~clipsam.models.base.RegionEmbedder` with CLIP-like similarities, for the scene it is shown
    (``embedder.scene = …``; :meth:`CLIPLikeWorld.segmenter` sets it)."""

    name = "clip-like"
    cache_key = None
    image_size = 48
    grid = 28  # dense-feature patches along the image's long side

    def __init__(self, world: CLIPLikeWorld) -> None:
        self.world = world
        self.logit_scale = world.params.logit_scale
        self.scene: WorldScene | None = None

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.world.text_vector(t) for t in texts]).astype(np.float32) if texts else \
            np.zeros((0, self.world.params.dim), np.float32)

    def embed_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        scene = self.scene
        if scene is None:
            raise RuntimeError("CLIPLikeEmbedder: set .scene (CLIPLikeWorld.segmenter does) before embedding crops")
        out = np.zeros((len(crops), self.world.params.dim), dtype=np.float32)
        for i, crop in enumerate(crops):
            counts = np.bincount(self._classes(crop), minlength=len(scene.colours) + 1)[:-1]
            out[i] = self._image_vector(counts, ("crop", hashlib.sha1(crop.tobytes()).hexdigest()))
        return out

    def _classes(self, pixels: np.ndarray) -> np.ndarray:
        """The pixel class of every pixel (the nearest scene colour; ``K`` for fill or blended edge pixels)."""
        assert self.scene is not None
        px = pixels.reshape(-1, 3).astype(np.int32)
        dist = np.abs(px[:, None, :] - self.scene.colours[None]).sum(-1)
        return np.where(dist.min(1) < 60, dist.argmin(1), len(self.scene.colours))

    def _image_vector(self, counts: np.ndarray, key: tuple) -> np.ndarray:
        """What CLIP sees of pixels with these class counts: the common image direction, their concepts mixed by
        pixel share, noise drawn from *key*, and the image-only direction."""
        assert self.scene is not None
        p, dim = self.world.params, self.world.params.dim
        concepts = np.stack([self.world.vector(k) for k in self.scene.concepts])
        shown = _unit(counts.astype(np.float64) @ concepts) if counts.sum() else np.zeros(dim)
        noise = self.world._random(np.random.default_rng(_digest(self.scene.seed, *key)))
        rest = max(0.0, 1.0 - p.image_common ** 2 - p.concept ** 2 - p.crop_noise ** 2)
        v = p.image_common * self.world._common + p.concept * shown + p.crop_noise * noise
        v[0] += np.sqrt(rest)  # the image-only direction: no text lies along it
        return _unit(v).astype(np.float32)

    def dense_features(self, image: np.ndarray) -> np.ndarray:
        """``(h, w, D)`` patch embeddings of the whole image on a grid of :attr:`grid` patches along its long side
        (ViT-B/16 read at 448 pixels has 28), each built like a crop of the pixels the patch holds: what
        MaskCLIP-style dense CLIP features give (noisy, soft at object edges)."""
        if self.scene is None:
            raise RuntimeError("CLIPLikeEmbedder: set .scene (CLIPLikeWorld.segmenter does) before embedding")
        h, w = image.shape[:2]
        patch = max(1, -(-max(h, w) // self.grid))
        gh, gw = -(-h // patch), -(-w // patch)
        classes = self._classes(image).reshape(h, w)
        k = len(self.scene.colours) + 1
        out = np.zeros((gh, gw, self.world.params.dim), dtype=np.float32)
        for y in range(gh):
            for x in range(gw):
                cell = classes[y * patch:(y + 1) * patch, x * patch:(x + 1) * patch]
                out[y, x] = self._image_vector(np.bincount(cell.ravel(), minlength=k)[:-1], ("patch", h, w, y, x))
        return out


class SAMLikeProposer:
    """A :class:`~clipsam.models.base.MaskProposer` that proposes what SAM's automatic generator proposes on the
    scene it is shown: every object and part, background slabs, each object together with what it lies on, a
    half of some objects, and near-duplicates."""

    name = "sam-like"

    def __init__(self, pieces: int = 0) -> None:
        self.scene: WorldScene | None = None
        self.pieces = pieces

    def embed(self, image: np.ndarray) -> Any:
        return {"shape": image.shape[:2]}

    def _masks(self) -> list[tuple[np.ndarray, float]]:
        scene = self.scene
        if scene is None:
            raise RuntimeError("SAMLikeProposer: set .scene (CLIPLikeWorld.segmenter does) first")
        rng = np.random.default_rng(_digest(scene.seed, "proposals"))
        out = []
        for inst in scene.instances:
            m = M.decode(inst.rle)
            out.append((m, rng.uniform(0.88, 0.99)))
            if inst.kind == "object" and self.pieces > 0:
                out += [(piece, rng.uniform(0.8, 0.95)) for piece in _pieces(m, inst, scene, rng, self.pieces)]
            elif inst.kind == "object":
                ys, xs = np.nonzero(m)
                if rng.random() < 0.6:  # a half: SAM often splits an object along a visible edge
                    if rng.random() < 0.5:
                        half = m & (np.arange(m.shape[1])[None, :] < xs.mean())
                    else:
                        half = m & (np.arange(m.shape[0])[:, None] < ys.mean())
                    out.append((half, rng.uniform(0.8, 0.95)))
                if rng.random() < 0.5:  # a near-duplicate a pixel larger
                    grown = m.copy()
                    grown[1:] |= m[:-1]
                    grown[:, 1:] |= m[:, :-1]
                    out.append((grown, rng.uniform(0.8, 0.9)))
        for union in scene.unions:
            out.append((M.decode(union), rng.uniform(0.85, 0.97)))
        for group in scene.groups:
            out.append((M.decode(group), rng.uniform(0.85, 0.97)))
        return out

    def generate(self, image: np.ndarray, embedding: Any = None, **params: Any) -> list[Proposal]:
        masks = self._masks()
        size = tuple(image.shape[:2])
        props = []
        for m, q in masks:
            rle = M.encode(m)
            if m.shape != size:
                rle = M.resize(rle, size)  # type: ignore[arg-type]
            props.append(Proposal(rle, float(q), float(min(1.0, q + 0.02))))
        return props

    def predict(self, embedding: Any, *, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True) -> PromptMasks:
        size = tuple(embedding["shape"])
        masks = [m for m, _ in self._masks()]
        if point_coords is not None:  # the masks under the click
            x, y = (int(v) for v in point_coords[0])
            masks = [m for m in masks if m[min(max(y, 0), size[0] - 1), min(max(x, 0), size[1] - 1)]]
        if box is not None:  # the one that fits the box best
            x0, y0, x1, y1 = box
            inside = np.zeros(size, dtype=bool)
            inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            masks = sorted(masks, key=lambda m: -(m & inside).sum() / max(1, (m | inside).sum()))[:1]
        hits = masks
        hits = sorted(hits, key=lambda m: m.sum())[: (3 if multimask_output else 1)] or [np.zeros(size, bool)]
        iou = np.linspace(0.95, 0.85, len(hits)).astype(np.float32)
        return PromptMasks(np.stack(hits), iou, np.zeros((len(hits), 16, 16), np.float32))


def _pieces(m: np.ndarray, inst: Instance, scene: WorldScene, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """*n* pieces of object mask *m* as SAM proposes them: halves and quarters along its box, a middle strip, a
    near-duplicate a pixel larger, the object without its parts (drawn without repeats, then repeated)."""
    ys, xs = np.nonzero(m)
    cy, cx = ys.mean(), xs.mean()
    col, row = np.arange(m.shape[1])[None, :], np.arange(m.shape[0])[:, None]
    grown = m.copy()
    grown[1:] |= m[:-1]
    grown[:, 1:] |= m[:, :-1]
    me = scene.instances.index(inst)
    bare = m.copy()
    for s in scene.instances:
        if s.kind == "part" and s.parent == me:
            bare &= ~M.decode(s.rle)
    third = (xs.max() - xs.min()) / 3.0
    cuts = [m & (col < cx), m & (col >= cx), m & (row < cy), m & (row >= cy), m & (col < cx) & (row < cy),
            m & (col >= cx) & (row >= cy), m & (np.abs(col - cx) < third / 2), grown, bare]
    order = rng.permutation(len(cuts))
    out = [cuts[int(order[k % len(cuts)])] for k in range(n)]
    return [c for c in out if c.sum() >= _MIN_PIXELS // 2]


class SAM3LikeProposer:
    """A :class:`~clipsam.models.base.ConceptProposer` that answers noun phrases on the scene it is shown, as
    SAM 3 does: every instance the phrase names or that is a kind of it (``"animal"`` finds the dog), scored
    ``0.55 + 0.4 cos`` (the cosine between the phrase's and the instance's concept vectors: "dog" on a puppy
    scores higher than "animal" on it), and instances of other labels at ``0.45 cos`` (a sibling or a subtype the
    instance is not: "puppy" on an adult dog), with seeded noise of 0.04; masks jitter by a pixel from phrase to
    phrase. Stuff is never found. Instances under *threshold* are not returned (SAM 3's 0.5)."""

    name = "sam3-like"

    def __init__(self, world: CLIPLikeWorld, threshold: float = 0.5) -> None:
        self.world = world
        self.threshold = threshold
        self.scene: WorldScene | None = None
        self.asked: list[str] = []

    def embed(self, image: np.ndarray) -> Any:
        return {"shape": image.shape[:2]}

    def find(self, embedding: Any, phrases: Sequence[str], *, threshold: float | None = None
             ) -> list[list[ConceptHit]]:
        scene = self.scene
        if scene is None:
            raise RuntimeError("SAM3LikeProposer: set .scene (CLIPLikeWorld.segmenter does) first")
        cut = self.threshold if threshold is None else threshold
        size = tuple(embedding["shape"])
        self.asked += list(phrases)
        out = []
        for phrase in phrases:
            q, qnode = self.world.vector(phrase), self.world.node_for(phrase)
            hits = []
            for k, inst in enumerate(scene.instances):
                if inst.kind == "stuff":
                    continue
                key = "/".join(inst.path)
                cos = float(q @ self.world._vectors[key])
                related = qnode is not None and self.world.taxonomy.get(key).is_a(qnode)
                rng = np.random.default_rng(_digest(scene.seed, "sam3", normal(phrase), k))
                score = float(np.clip((0.55 + 0.4 * cos if related else 0.45 * max(cos, 0.0))
                                      + rng.normal(0.0, 0.04), 0.0, 0.99))
                if score < cut:
                    continue
                m = M.decode(inst.rle)
                if rng.random() < 0.5:
                    grown = m.copy()
                    grown[1:] |= m[:-1]
                    grown[:, 1:] |= m[:, :-1]
                    m = grown
                rle = M.encode(m)
                if m.shape != size:
                    rle = M.resize(rle, size)  # type: ignore[arg-type]
                x, y, w, h = M.bbox_xywh(rle)
                hits.append(ConceptHit(rle, score, (x, y, x + w, y + h)))  # type: ignore[arg-type]
            out.append(sorted(hits, key=lambda h: -h.score))
        return out


# -- measuring a result against a scene's truth -------------------------------------------------------------

def basic_terms(scene: WorldScene) -> list[str]:
    """The basic-level name (``cat``, ``couch``, ``car``) of every object in *scene*, once each: what a user types."""
    return list(dict.fromkeys(s.path[1] for s in scene.instances if s.kind == "object" and len(s.path) > 1))


def absent_term(world: CLIPLikeWorld, scene: WorldScene, index: int = 0) -> str:
    """A basic-level name of ``everyday`` that is not in *scene* (drawn from *index*)."""
    present = {s.path[:2] for s in scene.instances}
    pool = [n.name for n in world.taxonomy if not n.is_part and len(n.path) == 2 and n.path not in present]
    return pool[_digest(scene.seed, "absent", index) % len(pool)]


def query_counts(seg: Any, scene: WorldScene, term: str, *, iou: float = 0.8) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)`` of a query result: a returned region is right when
    it covers, with *iou*, an object whose basic-level name is *term* (each object counted once)."""
    targets = [s for s in scene.instances if s.kind == "object" and len(s.path) > 1 and s.path[1] == term]
    regions = list(seg)
    if not regions:
        return 0, 0, len(targets)
    if not targets:
        return 0, len(regions), 0
    ious = M.iou_matrix([r.rle for r in regions], [t.rle for t in targets])
    used: set[int] = set()
    tp = 0
    for i in np.argsort(-ious.max(axis=1), kind="stable"):
        j = int(ious[i].argmax())
        if ious[i, j] >= iou and j not in used:
            used.add(j)
            tp += 1
    return tp, len(regions) - tp, len(targets) - len(used)


def object_crops(world: CLIPLikeWorld, scene: WorldScene) -> tuple[list[Instance], np.ndarray]:
    """The true objects of *scene* and their crop embeddings (the world's embedder is shown *scene*)."""
    from ..core.crops import crop_region

    emb = world.embedder
    emb.scene = scene
    objects = [s for s in scene.instances if s.kind == "object"]
    crops = [crop_region(scene.image, M.decode(s.rle), M.bbox_xywh(s.rle), size=emb.image_size) for s in objects]
    return objects, emb.embed_images(crops)


def pooled_agreement(world: CLIPLikeWorld, scene: WorldScene) -> tuple[int, int]:
    """``(agreeing, objects)``: how many true objects get the same top label (among the scene's object names)
    from their crop embedding and from the dense features pooled inside their mask."""
    from ..stages.guide import pool_regions

    objects, by_crop = object_crops(world, scene)
    if not objects:
        return 0, 0
    pooled = pool_regions(world.embedder.dense_features(scene.image), [s.rle for s in objects])
    text = world.embedder.embed_texts([f"a photo of a {n}." for n in sorted({s.path[1] for s in objects})])
    return int(((by_crop @ text.T).argmax(1) == (pooled @ text.T).argmax(1)).sum()), len(objects)


def level_hits(seg: Any, scene: WorldScene, *, iou: float = 0.8) -> dict[str, list[bool]]:
    """Per-level correctness of a :meth:`~clipsam.Segmenter.segment_everything` result: for every true instance,
    the region that covers it best is compared with it at each level (``object L1``, ``object L2``, ``object L3``:
    the first *L* names of the path; ``part``: the whole path, kind part; ``stuff``: unknown). An instance no
    region covers with *iou* counts as wrong at every level."""
    out: dict[str, list[bool]] = {}
    regions = list(seg)
    ious = M.iou_matrix([t.rle for t in scene.instances], [r.rle for r in regions]) if regions else None
    for k, inst in enumerate(scene.instances):
        r = regions[int(ious[k].argmax())] if ious is not None and ious[k].max() >= iou else None
        if inst.kind == "stuff":
            out.setdefault("stuff", []).append(r is not None and not r.label_path)
        elif inst.kind == "part":
            out.setdefault("part", []).append(r is not None and r.kind == "part" and tuple(r.label_path) == inst.path)
        else:
            for level in range(1, len(inst.path) + 1):
                ok = r is not None and r.kind == "object" and tuple(r.label_path[:level]) == inst.path[:level]
                out.setdefault(f"object L{level}", []).append(ok)
    return out


#: Kinds of returned region :func:`region_verdicts` tells apart, by what the region is in the scene.
REGION_KINDS = ("object", "part", "union", "group", "piece", "stuff")
#: Score bins of the reliability table (:func:`reliability`).
SCORE_BINS = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0 + 1e-9)


def region_verdicts(seg: Any, scene: WorldScene, taxonomy: Taxonomy, *, iou: float = 0.8) -> list[dict[str, Any]]:
    """Every labelled region of *seg* judged by what lies under most of its pixels -- what a user receives, not only
    the best region per truth.

    A region whose pixels lie mostly on background stuff is wrong whatever its label (stuff stays unknown). Else the
    object under most of its pixels (with its parts) is the *owner*, and the label is right when it is the owner's
    label or an ancestor of it, or a part whose object is the owner's label or an ancestor (``dog/head`` on a
    puppy). Kinds: ``object``, ``part`` or ``union`` when the region matches a true object, part or object-with-
    support with *iou*; ``group`` when it matches several instances of one category (two dogs: wrong whatever its
    label, it is no one instance); ``piece`` otherwise (a half, a sliver); ``stuff``. Returns one dict per labelled
    region: ``kind``, ``correct``, ``score``, ``label_path``, ``owner`` (the owner's path, or ``None``)."""
    regions = [r for r in seg if r.label_path]
    if not regions:
        return []
    owners = [i for i, s in enumerate(scene.instances) if s.kind in ("object", "stuff")]
    rles = [r.rle for r in regions]
    inter = M.intersection_matrix(rles, [scene.instances[i].rle for i in owners])
    ious = {kind: (M.iou_matrix(rles, masks) if masks else np.zeros((len(rles), 0)))
            for kind, masks in (("object", [s.rle for s in scene.instances if s.kind == "object"]),
                                ("part", [s.rle for s in scene.instances if s.kind == "part"]),
                                ("union", list(scene.unions)), ("group", list(scene.groups)))}
    out = []
    for k, r in enumerate(regions):
        owner = scene.instances[owners[int(inter[k].argmax())]] if len(owners) else None
        kind = next((name for name in ("object", "part", "union", "group") if ious[name].shape[1] and
                     ious[name][k].max() >= iou), "piece")
        if owner is None or owner.kind == "stuff" or kind == "group":
            out.append({"kind": "stuff" if kind == "piece" else kind, "correct": False, "score": float(r.score),
                        "label_path": tuple(r.label_path), "owner": owner.path if owner else None})
            continue
        out.append({"kind": kind, "correct": _fits(tuple(r.label_path), owner.path, taxonomy),
                    "score": float(r.score), "label_path": tuple(r.label_path), "owner": owner.path})
    return out


def _fits(label: tuple[str, ...], owner: tuple[str, ...], taxonomy: Taxonomy) -> bool:
    node = taxonomy.get(label) if label else None
    if node is None:
        return False
    if node.is_part:
        node = node.object_node()
    return tuple(owner[:len(node.path)]) == tuple(node.path)


def reliability(verdicts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Within each score bin (:data:`SCORE_BINS`), how many labelled regions and the share that is right."""
    rows = []
    for lo, hi in zip(SCORE_BINS[:-1], SCORE_BINS[1:], strict=True):
        hits = [v["correct"] for v in verdicts if lo <= v["score"] < hi]
        rows.append({"bin": f"[{lo:.1f}, {min(hi, 1.0):.1f}{']' if hi > 1 else ')'}", "regions": len(hits),
                     "right": float(np.mean(hits)) if hits else float("nan")})
    return rows
