"""What a pipeline is asked: typed requests, built and checked by :class:`~clipsam.Segmenter` before any model
runs, and the per-segmenter caches the pipelines share."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..core.taxonomy import Taxonomy, TaxonomyNode
from ..stages.prepare import EmbeddingCache, Work

__all__ = ["Caches", "Everything", "Query"]

#: Image embeddings kept per model (the last this many images).
EMBED_CACHE_SIZE = 4


@dataclass(frozen=True)
class Query:
    """``segment(image, query)``: the query's *terms*, split into taxonomy nodes it names (*resolved*) and free text."""

    image: Any
    terms: tuple[str, ...]
    taxonomy: Taxonomy | None
    resolved: tuple[TaxonomyNode, ...]
    free: tuple[str, ...]
    refine: bool = False
    include_parts: bool = True
    part_points: int = 0
    strategy: str = "grid"
    generator_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Everything:
    """``segment_everything(image)``: every region, labelled with *taxonomy* when *label*."""

    image: Any
    taxonomy: Taxonomy | None
    label: bool = True
    include_parts: bool = True
    part_points: int = 0
    with_embeddings: bool = False
    strategy: str = "grid"
    generator_params: dict[str, Any] = field(default_factory=dict)


class Caches:
    """A segmenter's caches, keyed by model and image content, safe to share between threads: SAM's image
    embeddings (*sam*), those of SAM 3's ``unknown_sam`` (*unknown*), and CLIP's dense patch features."""

    def __init__(self) -> None:
        self.sam = EmbeddingCache(EMBED_CACHE_SIZE)
        self.unknown = EmbeddingCache(2)
        self._dense = EmbeddingCache(2)
        self._adapters: dict[int, _DenseAdapter] = {}
        self._lock = threading.Lock()

    def dense(self, work: Work, embedder: Any) -> Any:
        """*embedder*'s dense patch features of the image (one CLIP pass per image and embedder)."""
        with self._lock:
            adapter = self._adapters.get(id(embedder))
            if adapter is None or adapter.embedder is not embedder:
                adapter = self._adapters[id(embedder)] = _DenseAdapter(embedder)
        return self._dense.get(work, adapter)


class _DenseAdapter:
    """An embedder's ``dense_features`` under the name :class:`EmbeddingCache` calls (one per embedder, so its id
    keys the cache)."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.embed = embedder.dense_features
