"""The exact oracle world: a synthetic scene with known shapes, labels and parts, and a proposer and an embedder
that know the truth, so labels, label paths, the tree and ``unknown`` handling can be asserted exactly."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import masks as M
from ..core.crops import CLIP_MEAN_RGB
from ..core.taxonomy import Taxonomy
from ..models.base import PromptMasks, Proposal

__all__ = ["SCENE_TAXONOMY", "OracleEmbedder", "OracleProposer", "Scene", "SceneShape", "oracle_segmenter",
           "synthetic_scene"]



# -- the synthetic scene ---------------------------------------------------------------------------------

#: The scene's taxonomy: objects with is-a children and parts.
SCENE_TAXONOMY: dict[str, Any] = {
    "name": "scene",
    "nodes": [
        {"name": "animal", "children": [
            {"name": "dog", "children": ["puppy"], "parts": [{"name": "head", "parts": ["ear"]}, "leg", "tail"]},
            {"name": "cat", "parts": ["head", "tail"]},
        ]},
        {"name": "vehicle", "children": [{"name": "car", "parts": ["wheel", "window"]}]},
        {"name": "furniture", "children": [{"name": "sofa", "parts": ["cushion", "armrest"]}]},
    ],
}


@dataclass(frozen=True)
class SceneShape:
    """One painted region of the synthetic scene and the truth about it."""

    name: str
    colour: tuple[int, int, int]
    rle: M.RLE = field(repr=False)
    label_path: tuple[str, ...]  # () for unknown
    kind: str  # object, part, unknown
    parent: str | None  # name of the containing shape in the expected tree
    phrases: dict[str, float] = field(repr=False)  # what the oracle "sees" in this shape


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    shapes: tuple[SceneShape, ...]
    taxonomy: Taxonomy

    def shape(self, name: str) -> SceneShape:
        return next(s for s in self.shapes if s.name == name)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0


def _rect(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def synthetic_scene(height: int = 120, width: int = 200) -> Scene:
    """A scene with nested, labelled shapes:

    * a dog (``animal/dog``) whose head (part) holds an ear (part of the head);
    * a puppy (``animal/dog/puppy``);
    * a sofa (``furniture/sofa``) with a cat (``animal/cat``) lying on it: an object on an object;
    * a car (``vehicle/car``) with two wheels (parts);
    * a star-like blob that no label describes (``unknown``).
    """
    h, w = height, width
    sy, sx = h / 120, w / 200
    E = lambda cy, cx, ry, rx: _ellipse(h, w, cy * sy, cx * sx, ry * sy, rx * sx)  # noqa: E731
    R = lambda y0, x0, y1, x1: _rect(h, w, int(y0 * sy), int(x0 * sx), int(y1 * sy), int(x1 * sx))  # noqa: E731

    dog_body, dog_head, dog_ear = E(30, 40, 14, 26), E(18, 66, 11, 11), E(11, 70, 4, 4)
    puppy = E(28, 110, 8, 12)
    sofa, cat = R(70, 8, 112, 88), E(74, 48, 9, 18)
    car, wheel1, wheel2 = R(62, 110, 96, 186), E(96, 128, 7, 7), E(96, 168, 7, 7)
    blob = E(25, 165, 12, 10) | E(25, 165, 5, 22)

    specs = [  # name, colour, mask, path, kind, parent, phrases (paint order: wholes first)
        ("dog", (150, 90, 40), dog_body | dog_head | dog_ear, ("animal", "dog"), "object", None,
         {"dog": 1.0, "animal": 0.5}),
        ("dog head", (200, 140, 80), dog_head | dog_ear, ("animal", "dog", "head"), "part", "dog",
         {"dog head": 1.0, "head": 1.0}),
        ("dog ear", (90, 50, 20), dog_ear, ("animal", "dog", "head", "ear"), "part", "dog head",
         {"dog ear": 1.0, "ear": 1.0}),
        ("puppy", (230, 190, 120), puppy, ("animal", "dog", "puppy"), "object", None,
         {"puppy": 1.0, "dog": 0.6, "animal": 0.4}),
        ("sofa", (40, 60, 160), sofa | cat, ("furniture", "sofa"), "object", None, {"sofa": 1.0, "furniture": 0.5}),
        ("cat", (250, 250, 250), cat, ("animal", "cat"), "object", "sofa", {"cat": 1.0, "animal": 0.5}),
        ("car", (200, 30, 30), car | wheel1 | wheel2, ("vehicle", "car"), "object", None,
         {"car": 1.0, "vehicle": 0.5}),
        ("wheel 1", (20, 20, 20), wheel1, ("vehicle", "car", "wheel"), "part", "car", {"car wheel": 1.0, "wheel": 1.0}),
        ("wheel 2", (20, 20, 20), wheel2, ("vehicle", "car", "wheel"), "part", "car", {"car wheel": 1.0, "wheel": 1.0}),
        ("blob", (60, 200, 90), blob, (), "unknown", None, {"zorblax": 1.0}),
    ]
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:] = (235, 225, 200)
    shapes = []
    for name, colour, mask, path, kind, parent, phrases in specs:
        image[mask] = colour
        shapes.append(SceneShape(name, colour, M.encode(mask), path, kind, parent, phrases))  # type: ignore[arg-type]
    return Scene(image=image, shapes=tuple(shapes), taxonomy=Taxonomy.from_dict(SCENE_TAXONOMY, origin="<scene>"))


class OracleProposer:
    """Proposes exactly the scene's shapes (plus one near-duplicate, to exercise merging)."""

    name = "oracle-proposer"

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.embed_calls = 0

    def embed(self, image: np.ndarray) -> Any:
        self.embed_calls += 1
        return {"shape": image.shape[:2]}

    def _rles(self, size: tuple[int, int]) -> list[M.RLE]:
        return [M.resize(s.rle, size) for s in self.scene.shapes]

    def generate(self, image: np.ndarray, embedding: Any = None, **params: Any) -> list[Proposal]:
        size = tuple(image.shape[:2])
        rles = self._rles(size)  # type: ignore[arg-type]
        props = [Proposal(r, 0.95, 0.97) for r in rles]
        dup = M.decode(rles[0]).copy()
        ys, xs = np.nonzero(dup)
        dup[ys[:3], xs[:3]] = False  # the dog minus 3 pixels: a near-duplicate with lower quality
        props.append(Proposal(M.encode(dup), 0.80, 0.90))  # type: ignore[arg-type]
        return props

    def predict(self, embedding: Any, *, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True) -> PromptMasks:
        size = tuple(embedding["shape"])
        masks = [M.decode(r) for r in self._rles(size)]  # type: ignore[arg-type]
        if point_coords is not None:
            x, y = (int(v) for v in point_coords[0])
            hits = [m for m in masks if m[min(y, size[0] - 1), min(x, size[1] - 1)]]
        else:
            x0, y0, x1, y1 = box
            inside = np.zeros(size, dtype=bool)
            inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            hits = sorted(masks, key=lambda m: -(m & inside).sum() / max(1, (m | inside).sum()))[:1]
        hits = sorted(hits, key=lambda m: m.sum())[: (3 if multimask_output else 1)] or [np.zeros(size, bool)]
        iou = np.linspace(0.95, 0.85, len(hits)).astype(np.float32)
        return PromptMasks(np.stack(hits), iou, np.zeros((len(hits), 16, 16), np.float32))


class OracleEmbedder:
    """Embeds crops by the scene colour that dominates them and texts by the scene phrase they contain.

    Each scene phrase (``dog``, ``dog head``, ``animal`` …) and each negative label is one axis. A crop maps to
    its dominant shape's weighted phrases (a puppy is mostly "puppy", partly "dog" and "animal"); a prompt made
    from a template maps to the label it names (any other text to the longest phrase it contains), and a label
    that names nothing in the scene to one shared "elsewhere" axis. CLIP's behaviour, made exact.
    """

    name = "oracle-embedder"
    cache_key = None
    image_size = 64
    logit_scale = 100.0

    def __init__(self, scene: Scene, negatives: Sequence[str] = ()) -> None:
        from ..core.labels import DEFAULT_NEGATIVES

        self.scene = scene
        phrases = sorted({p for s in scene.shapes for p in s.phrases}
                         | {n.name for n in scene.taxonomy} | set(negatives or DEFAULT_NEGATIVES)
                         | {p for n in scene.taxonomy for p in n.prompts})
        self.axes = {p: i for i, p in enumerate(phrases)}
        self.dim = len(phrases) + 1  # the last axis: text that names nothing in the scene
        self.colours = np.asarray([s.colour for s in scene.shapes], dtype=np.float64)
        self.background = np.asarray(scene.image[0, 0], dtype=np.float64)
        self.texts_seen: list[str] = []

    def _vec(self, weights: dict[str, float]) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float64)
        for phrase, wt in weights.items():
            if phrase in self.axes:
                v[self.axes[phrase]] += wt
        return v

    def embed_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(crops), self.dim), dtype=np.float32)
        fill = np.asarray(CLIP_MEAN_RGB, dtype=np.float64)
        for i, crop in enumerate(crops):
            px = crop.reshape(-1, 3).astype(np.float64)
            px = px[(np.abs(px - fill).sum(1) > 12) & (np.abs(px - self.background).sum(1) > 12)]
            if len(px) == 0:
                out[i, self.axes["background"]] = 1.0
                continue
            dist = np.abs(px[:, None, :] - self.colours[None]).sum(-1)
            near = dist.min(1) < 40
            counts = np.bincount(dist.argmin(1)[near], minlength=len(self.colours))
            shape = self.scene.shapes[int(counts.argmax())]
            v = self._vec(shape.phrases)
            out[i] = v / max(np.linalg.norm(v), 1e-12)
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            self.texts_seen.append(text)
            label = _template_label(text.lower())
            if label is not None:  # a prompt made from a template: the label it names, exactly ("hot dog" is no dog)
                out[i, self.axes.get(label, self.dim - 1)] = 1.0
                continue
            found = [p for p in self.axes if re.search(rf"\b{re.escape(p)}\b", text.lower())]
            out[i, self.axes[max(found, key=len)] if found else self.dim - 1] = 1.0
        return out


def _template_label(text: str) -> str | None:
    from .world import template_label

    return template_label(text)


def oracle_segmenter(scene: Scene | None = None, **kwargs: Any):
    """A :class:`~clipsam.Segmenter` on the oracle models of *scene* (default: :func:`synthetic_scene`)."""
    from ..segmenter import Segmenter

    scene = scene or synthetic_scene()
    kwargs.setdefault("taxonomy", scene.taxonomy)
    kwargs.setdefault("text_cache", False)
    return Segmenter.from_models(OracleProposer(scene), OracleEmbedder(scene), **kwargs)
