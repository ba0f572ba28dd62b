"""Labels from embeddings: prompt ensembles, the text-embedding cache, and top-down hierarchical scoring.

Pure numpy; the text encoder is any :class:`~clipsam.models.base.RegionEmbedder`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..models.base import RegionEmbedder
from .taxonomy import Taxonomy, TaxonomyNode

log = logging.getLogger(__name__)

#: Prompt templates averaged into one text embedding per label (a small subset of CLIP's ImageNet ensemble).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)

#: "Nothing of interest" labels that compete with the real ones, so that no match is a valid answer.
DEFAULT_NEGATIVES: tuple[str, ...] = (
    "background", "wall", "floor", "ground", "sky", "texture", "pattern", "surface",
)

__all__ = ["DEFAULT_NEGATIVES", "DEFAULT_TEMPLATES", "LabelDecision", "TextBank", "fill_template", "label_hierarchical",
           "score_flat", "softmax"]


#: Part of every text-cache key: changes whenever the texts made from a template and a label change.
_TEXT_FORMAT = "articles-v1"
_AN_EXCEPTIONS = ("uni", "use", "usu", "uti", "eu", "ewe", "one", "once", "ur")
_AN_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def fill_template(template: str, label: str) -> str:
    """*template* with *label* in its ``{}``, the article before it made right: "a photo of an animal.",
    "a photo of a unicycle.", "a photo of an hourglass." (prompt ensembles average over such sentences)."""
    text = template.format(label)
    word = label.strip().lower()
    an = (word[:1] in "aeiou" and not word.startswith(_AN_EXCEPTIONS)) or word.startswith(_AN_SILENT_H)
    if an and word:
        head, sep, _ = template.partition("{}")
        if sep and (head.endswith(" a ") or head == "a "):
            text = head[:-2] + "an " + label + template[len(head) + 2:]
    return text


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


class TextBank:
    """Text embeddings of labels, each the normalised mean over its prompts x templates.

    Cached in memory and, when the embedder has a ``cache_key`` and *cache_dir* is given, on disk (one ``.npy``
    per (model, templates, prompts)), so a label is encoded once per model, ever.
    """

    def __init__(self, embedder: RegionEmbedder, templates: Sequence[str] = DEFAULT_TEMPLATES,
                 cache_dir: Path | None = None) -> None:
        self.embedder = embedder
        self.templates = tuple(templates)
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError(f"every template must contain '{{}}', got {self.templates}")
        key = getattr(embedder, "cache_key", None)
        self.cache_dir = (Path(cache_dir) / _safe(key)) if (cache_dir is not None and key) else None
        self._memory: dict[tuple[str, ...], np.ndarray] = {}
        self.encoded_texts = 0  # how many texts went through the text encoder (for tests and benchmarks)

    @property
    def logit_scale(self) -> float:
        """The temperature that turns cosine similarities into logits (the embedder's; CLIP: 100)."""
        return float(self.embedder.logit_scale)

    def _file(self, prompts: tuple[str, ...]) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha1("\x1f".join((_TEXT_FORMAT,) + self.templates + ("\x1e",) + prompts).encode()).hexdigest()
        return self.cache_dir / f"{digest}.npy"

    def embed(self, prompt_sets: Sequence[Sequence[str]]) -> np.ndarray:
        """``(M, D) float32`` unit vectors, one per prompt set (a label's synonyms)."""
        keys = [tuple(p) for p in prompt_sets]
        missing = []
        for key in dict.fromkeys(keys):
            if key in self._memory:
                continue
            path = self._file(key)
            if path is not None and path.is_file():
                try:
                    self._memory[key] = np.load(path)
                    continue
                except (OSError, ValueError):
                    log.warning("ignoring unreadable text cache file %s", path)
            missing.append(key)
        if missing:
            texts = [fill_template(t, p) for key in missing for p in key for t in self.templates]
            vecs = self.embedder.embed_texts(texts)
            self.encoded_texts += len(texts)
            start = 0
            for key in missing:
                n = len(key) * len(self.templates)
                mean = vecs[start:start + n].mean(axis=0)
                start += n
                vec = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
                self._memory[key] = vec
                path = self._file(key)
                if path is not None:
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        # one temporary name per writer: workers that embed the same label never share one
                        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
                        try:
                            np.save(tmp, vec)
                            tmp.replace(path)
                        finally:
                            tmp.unlink(missing_ok=True)
                    except OSError as exc:  # a read-only cache must not stop labelling
                        log.warning("could not write text cache %s: %s", path, exc)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._memory[k] for k in keys])

    def embed_nodes(self, nodes: Sequence[TaxonomyNode]) -> np.ndarray:
        return self.embed([n.prompts for n in nodes])


@dataclass(frozen=True)
class LabelDecision:
    """The label chosen for one region.

    Attributes:
        node: the deepest accepted taxonomy node, or ``None`` when nothing matched (open set: unknown).
        path_scores: probability of the path down to each accepted level, top-down (same length as
            ``node.path``): the product of the level-by-level probabilities, so it never increases with depth.
        best_guess: for an unknown region, the most likely top-level node anyway (for inspection).
        best_guess_score: its probability.
    """

    node: TaxonomyNode | None
    path_scores: tuple[float, ...] = ()
    best_guess: TaxonomyNode | None = None
    best_guess_score: float = 0.0

    @property
    def score(self) -> float:
        """The probability of the whole path (its last entry): what ``.best``, ``--min-score`` and AP rank by, so a
        deep label never outranks a shallow one on weaker evidence."""
        return self.path_scores[-1] if self.path_scores else 0.0


def _probs(embeddings: np.ndarray, text: np.ndarray, scale: float) -> np.ndarray:
    return softmax(scale * (embeddings @ text.T))


def score_flat(
    embeddings: np.ndarray,
    candidates: Sequence[TaxonomyNode],
    bank: TextBank,
    *,
    negatives: Sequence[str] = DEFAULT_NEGATIVES,
    min_confidence: float = 0.3,
) -> list[LabelDecision]:
    """One level: softmax over *candidates* + *negatives*; accept the best candidate if it beats every negative
    and reaches *min_confidence*."""
    n = len(embeddings)
    if n == 0:
        return []
    if not candidates:
        return [LabelDecision(None) for _ in range(n)]
    text = bank.embed([c.prompts for c in candidates] + [(neg,) for neg in negatives])
    p = _probs(embeddings, text, bank.logit_scale)
    k = len(candidates)
    best_cand = p[:, :k].argmax(axis=1)
    # a candidate must strictly beat every negative: a region like none of them (a tie) is not the first category
    best_negative = p[:, k:].max(axis=1) if p.shape[1] > k else np.zeros(n)
    out = []
    for i in range(n):
        guess, guess_p = candidates[int(best_cand[i])], float(p[i, best_cand[i]])
        if guess_p > best_negative[i] and guess_p >= min_confidence:
            out.append(LabelDecision(guess, (guess_p,), guess, guess_p))
        else:
            out.append(LabelDecision(None, (), guess, guess_p))
    return out


def descend(
    embeddings: np.ndarray,
    decisions: list[LabelDecision],
    bank: TextBank,
    *,
    descend_confidence: float = 0.5,
) -> list[LabelDecision]:
    """Refine accepted labels down the is-a tree: at each node, softmax over the node itself ("just a dog") and
    its children; step into the best child while it wins with at least *descend_confidence*."""
    out = list(decisions)
    frontier = {i for i, d in enumerate(out) if d.node is not None and d.node.children}
    while frontier:
        by_node: dict[int, list[int]] = {}
        nodes: dict[int, TaxonomyNode] = {}
        for i in frontier:
            node = out[i].node
            assert node is not None
            by_node.setdefault(id(node), []).append(i)
            nodes[id(node)] = node
        frontier = set()
        for key, idx in by_node.items():
            node = nodes[key]
            options = [node, *node.children]
            p = _probs(embeddings[idx], bank.embed_nodes(options), bank.logit_scale)
            for row, i in enumerate(idx):
                j = int(p[row].argmax())
                if j > 0 and p[row, j] >= descend_confidence:
                    child = options[j]
                    prev = out[i]
                    path_p = prev.score * float(p[row, j])  # P(path to child) = P(path to node) * P(child | node)
                    out[i] = LabelDecision(child, (*prev.path_scores, path_p), prev.best_guess,
                                           prev.best_guess_score)
                    if child.children:
                        frontier.add(i)
    return out


def label_hierarchical(
    embeddings: np.ndarray,
    taxonomy: Taxonomy,
    bank: TextBank,
    *,
    negatives: Sequence[str] = DEFAULT_NEGATIVES,
    min_confidence: float = 0.3,
    descend_confidence: float = 0.5,
) -> list[LabelDecision]:
    """Top-down labelling of ``(N, D)`` region embeddings against *taxonomy*'s object categories.

    A region below *min_confidence* at the top level, or closer to a negative label, is unknown (open set),
    not forced into the nearest class.
    """
    top = score_flat(embeddings, taxonomy.top, bank, negatives=negatives, min_confidence=min_confidence)
    return descend(embeddings, top, bank, descend_confidence=descend_confidence)


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in key)
