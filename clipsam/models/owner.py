"""Model ownership for :class:`~clipsam.Segmenter`: models and the text bank built lazily from registry names, or
adopted from objects the user built. Importing this module imports no torch (the builders load on first use)."""

from __future__ import annotations

import threading
from typing import Any

from ..core.labels import TextBank
from ..errors import ConfigError
from .backends import Backend, backend_for, backend_of
from .base import MaskProposer, RegionEmbedder, is_concept_proposer

__all__ = ["ModelOwner"]


class ModelOwner:
    """Holds a proposer (SAM), an embedder (CLIP), their text bank, and SAM 3's ``unknown_sam``. Subclasses set
    ``sam_name``, ``clip_name``, ``device_name``, ``download``, ``seed``, ``precision``, ``runtime``, ``speed``,
    ``templates``, ``text_cache`` and ``unknown_sam``, and ``_proposer``, ``_unknown_proposer``, ``_embedder``,
    ``_bank`` to ``None``."""

    sam_name: str
    clip_name: str
    device_name: Any
    download: bool
    seed: int
    precision: str
    runtime: str
    speed: str
    templates: tuple[str, ...]
    text_cache: bool
    unknown_sam: Any
    _proposer: MaskProposer | None
    _unknown_proposer: Any
    _embedder: RegionEmbedder | None
    _bank: TextBank | None
    #: builds one model at a time: threads that share a segmenter before its first use must not build it twice (nor
    #: interleave their draws from torch's global generator while seeding random weights)
    _build_lock = threading.RLock()

    @property
    def proposer(self) -> MaskProposer:
        """The mask proposer (SAM), built on first use."""
        return self._built("_proposer", "build_proposer", self.sam_name)

    @property
    def embedder(self) -> RegionEmbedder:
        """The region embedder (CLIP), built on first use."""
        return self._built("_embedder", "build_embedder", self.clip_name)

    @property
    def backend(self) -> Backend:
        """What kind of mask model *sam* is and what it can do (:mod:`clipsam.models.backends`)."""
        return backend_for(self._proposer) if self._proposer is not None else backend_of(self.sam_name)

    @property
    def is_concept_model(self) -> bool:
        """*sam* is SAM 3 (finds every instance of a phrase) rather than a point-prompted SAM."""
        return self.backend.pipeline == "concepts"

    @property
    def unknown_proposer(self) -> Any:
        """The SAM 1 / 2.1 model whose automatic masks complete a SAM 3 result (``unknown_sam``), built on first use."""
        if self._unknown_proposer is None and self.unknown_sam is None:
            raise ConfigError("this SAM 3 segmenter has unknown_sam=None: it only finds the concepts it is asked "
                              "for; give unknown_sam='vit_b' (or another SAM) for prompt-free masks")
        return self._built("_unknown_proposer", "build_proposer", self.unknown_sam)

    def _built(self, attr: str, builder: str, name: str) -> Any:
        """The model in *attr*, built by *builder* from registry *name* on first use, once, whichever threads ask."""
        if getattr(self, attr) is None:
            with self._build_lock:
                if getattr(self, attr) is None:
                    setattr(self, attr, self._load(builder, name))
        return getattr(self, attr)

    def _load(self, builder: str, name: str) -> Any:
        build = _build()
        model = getattr(build, builder)(name, build.resolve_device(self.device_name), download=self.download,
                                        seed=self.seed, precision=self.precision, runtime=self.runtime)
        return build.for_speed(model, self.speed)

    def runtimes(self) -> dict[str, str]:
        """What runs each model built so far: ``{"sam": "onnx", "clip": "torch"}`` (see ``runtime``)."""
        built = {"sam": self._proposer, "clip": self._embedder}
        return {k: getattr(m, "runtime", "torch") for k, m in built.items() if m is not None}

    @property
    def text_bank(self) -> TextBank:
        if self._bank is None:
            from ..weights import home

            embedder = self.embedder
            with self._build_lock:
                if self._bank is None:
                    self._bank = TextBank(embedder, self.templates,
                                          cache_dir=home() / "text-embeddings" if self.text_cache else None)
        return self._bank

    def adopt(self, sam: Any = None, clip: Any = None, *, preprocess: Any = None, tokenizer: Any = None) -> None:
        """Use models built elsewhere: a ``segment_anything`` ``Sam``, any :class:`MaskProposer` or
        :class:`~clipsam.models.base.ConceptProposer` (SAM 3); an open_clip
        model (with its *preprocess* and *tokenizer*) or any :class:`RegionEmbedder`."""
        if sam is not None:
            proposer = sam if isinstance(sam, MaskProposer) or is_concept_proposer(sam) else \
                _build().wrap_proposer(sam, self.device_name)
            self._proposer = self._on_runtime(proposer)
            self.sam_name = getattr(self._proposer, "name", "<custom>")
        if clip is not None:
            embedder = clip if isinstance(clip, RegionEmbedder) else \
                _build().wrap_embedder(clip, preprocess, tokenizer, self.device_name)
            self._embedder = self._on_runtime(embedder)
            self.clip_name = getattr(self._embedder, "name", "<custom>")
        self._bank = None

    def _on_runtime(self, model: Any) -> Any:
        """An adopted *model* on this segmenter's runtime and speed (the registry's builders do the same)."""
        if self.runtime == "torch":
            return model
        build = _build()
        return build.for_speed(build.with_runtime(model, self.runtime), self.speed)


def _build() -> Any:
    """:mod:`clipsam.models.build`, imported on first use (it imports torch)."""
    from . import build

    return build
