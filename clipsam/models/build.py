"""Build model adapters from registry names (``vit_b``, ``ViT-B-16/openai``, ``tiny-random``)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from .. import weights
from ..errors import ModelError
from .backends import TINY_SAM2
from .base import TINY, TINY_SAM3, MaskProposer, RegionEmbedder
from .clip import ClipEmbedder
from .sam import SamProposer

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise ModelError(f"device {device!r}: no CUDA GPU is available here (torch {torch.__version__}, {build}); "
                             "use --device cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ModelError(f"device {device!r}: this machine has {count} CUDA device(s), numbered 0..{count - 1}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelError(f"device {device!r}: Apple MPS is not available here; use --device cpu or auto")
    return dev


def sam_names() -> list[str]:
    return sorted(n for n, c in weights.REGISTRY.items() if c.family == "sam") + [TINY, TINY_SAM2, TINY_SAM3]


def clip_names() -> list[str]:
    return sorted(n for n, c in weights.REGISTRY.items() if c.family == "clip") + [TINY]


def build_proposer(
    name: str, device: torch.device | str = "cpu", *, download: bool = True, progress=None, seed: int = 0,
    precision: str = "fp32", runtime: str = "torch",
) -> SamProposer:
    """A :class:`SamProposer` for registry name *name*, its weights fetched and verified as needed (a
    :class:`~clipsam.models.sam3.Sam3Proposer` for SAM 3 entries); *runtime* (:data:`clipsam.models.onnx.RUNTIMES`)
    chooses ONNX Runtime for SAM 1's heavy parts on a CPU."""
    proposer = _build_proposer(name, device, download=download, progress=progress, seed=seed, precision=precision)
    sha = weights.expected_sha256(weights.get(name)) if name in weights.REGISTRY else None
    return with_runtime(proposer, runtime, key=sha or None)


def _build_proposer(name: str, device: torch.device | str, *, download: bool, progress: Any, seed: int,
                    precision: str) -> SamProposer:
    if name == TINY:
        from .tiny import tiny_sam

        return SamProposer(tiny_sam(seed), device, name=TINY, precision=precision)
    if name == TINY_SAM2:
        from .sam2 import Sam2Proposer, build_sam2_model

        return Sam2Proposer(build_sam2_model("sam2.1_hiera_t", "cpu", seed=seed), device,  # type: ignore
                            name=TINY_SAM2)
    if name == TINY_SAM3:
        from .sam3 import TINY_MAX_INSTANCES, TINY_THRESHOLD, Sam3Proposer, build_sam3_model, tiny_sam3_config

        return Sam3Proposer(build_sam3_model(tiny_sam3_config(), seed), device, name=TINY_SAM3,  # type: ignore
                            threshold=TINY_THRESHOLD, max_instances=TINY_MAX_INSTANCES)
    ckpt = _checkpoint(name, "sam", sam_names())
    if ckpt.extra.get("backend") == "sam3":
        from .sam3 import Sam3Proposer, build_sam3_model, load_sam3_weights, require_transformers

        require_transformers()  # before anything is downloaded
        path = weights.ensure(ckpt.name, download=download, progress=progress)
        model = build_sam3_model(_sam3_config(ckpt))
        load_sam3_weights(model, weights.load_state_dict(path, ckpt), str(path))
        log.info("loaded SAM 3 %s from %s", ckpt.name, path)
        return Sam3Proposer(model, device, name=ckpt.name)  # type: ignore[return-value]
    if ckpt.extra.get("backend") == "sam2":
        from .sam2 import Sam2Proposer, build_sam2_model

        model = build_sam2_model(ckpt.arch, "cpu")  # checks the sam2 package before downloading anything
        path = weights.ensure(ckpt.name, download=download, progress=progress)
        model.load_state_dict(weights.load_state_dict(path, ckpt))
        log.info("loaded SAM 2.1 %s from %s", ckpt.name, path)
        return Sam2Proposer(model, device, name=ckpt.name)  # type: ignore[return-value]
    from segment_anything import sam_model_registry

    path = weights.ensure(ckpt.name, download=download, progress=progress)
    model = sam_model_registry[ckpt.arch](checkpoint=None)
    model.load_state_dict(weights.load_state_dict(path, ckpt))
    log.info("loaded SAM %s from %s", ckpt.name, path)
    return SamProposer(model, device, name=ckpt.name, precision=precision)


def _sam3_config(ckpt: weights.Checkpoint) -> Any:
    """The architecture of a SAM 3 entry: ``transformers``' default ``Sam3Config`` (that of ``facebook/sam3``), or
    the entry's ``extra["config"]`` (a dict of ``Sam3Config`` arguments, for other sizes)."""
    from transformers import Sam3Config

    config = ckpt.extra.get("config")
    return Sam3Config(**config) if config else Sam3Config()


def build_embedder(
    name: str, device: torch.device | str = "cpu", *, download: bool = True, progress=None, seed: int = 0,
    precision: str = "fp32", runtime: str = "torch",
) -> ClipEmbedder:
    """A :class:`ClipEmbedder` for registry name *name*, its weights fetched and verified as needed; *runtime*
    chooses ONNX Runtime for its image and text towers on a CPU."""
    embedder = _build_embedder(name, device, download=download, progress=progress, seed=seed, precision=precision)
    sha = weights.expected_sha256(weights.get(name)) if name in weights.REGISTRY else None
    return with_runtime(embedder, runtime, key=sha or None)


def _build_embedder(name: str, device: torch.device | str, *, download: bool, progress: Any, seed: int,
                    precision: str) -> ClipEmbedder:
    if name == TINY:
        from .tiny import tiny_clip

        model, preprocess, tokenizer = tiny_clip(seed)
        return ClipEmbedder(model, preprocess, tokenizer, device, name=TINY, cache_key=None, precision=precision)
    ckpt = _checkpoint(name, "clip", clip_names())
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    path = weights.ensure(ckpt.name, download=download, progress=progress)
    state = weights.load_state_dict(path, ckpt)
    model = build_model_from_openai_state_dict(state, quick_gelu=bool(ckpt.extra.get("quick_gelu", True)),
                                               cast_dtype=None).float()
    size = model.visual.image_size
    preprocess = open_clip.image_transform(size[0] if isinstance(size, tuple) else size, is_train=False)
    tokenizer = open_clip.get_tokenizer(ckpt.arch)
    log.info("loaded CLIP %s from %s", ckpt.name, path)
    key = f"{ckpt.name}@{ckpt.sha256[:16]}"
    return ClipEmbedder(model, preprocess, tokenizer, device, name=ckpt.name, cache_key=key, precision=precision)


def _checkpoint(name: str, family: str, known: list[str]) -> weights.Checkpoint:
    try:
        ckpt = weights.get(name)
    except Exception:
        raise ModelError(f"unknown {family.upper()} model {name!r}; choose one of: {', '.join(known)}") from None
    if ckpt.family != family:
        raise ModelError(f"{name!r} is a {ckpt.family.upper()} checkpoint, not {family.upper()}; choose one of: "
                         f"{', '.join(known)}")
    return ckpt


def wrap_proposer(sam: Any, device: str | torch.device = "auto") -> MaskProposer:
    """A user's ``segment_anything`` ``Sam`` model as a proposer; a :class:`MaskProposer` as it is."""
    if isinstance(sam, MaskProposer):
        return sam
    from segment_anything.modeling import Sam

    if isinstance(sam, Sam):
        return SamProposer(sam, resolve_device(device), name="custom-sam")
    raise ModelError(f"sam must be a segment_anything Sam model or a MaskProposer, got {type(sam).__name__}")


def wrap_embedder(clip: Any, preprocess: Any = None, tokenizer: Any = None,
                  device: str | torch.device = "auto") -> RegionEmbedder:
    """A user's open_clip model (with its preprocess and tokenizer) as an embedder; a :class:`RegionEmbedder` as
    it is."""
    if isinstance(clip, RegionEmbedder):
        return clip
    if not (hasattr(clip, "encode_image") and hasattr(clip, "encode_text")):
        raise ModelError(f"clip must be an open_clip model or a RegionEmbedder, got {type(clip).__name__}")
    if preprocess is None or tokenizer is None:
        raise ModelError("an open_clip model needs its preprocess and tokenizer: "
                         "Segmenter.from_models(sam, clip, preprocess=..., tokenizer=...)")
    return ClipEmbedder(clip, preprocess, tokenizer, resolve_device(device), name="custom-clip")


def for_speed(model: Any, speed: str) -> Any:
    """*model* as ``speed`` wants it: with ``fast``, an embedder whose towers run in ONNX Runtime gets CLIP's image
    tower in int8 (2.4x faster on a 2-core CPU without VNNI, ``benchmarks/RESULTS.md``); anything else as it is."""
    from . import onnx

    inner = getattr(model, "model", None)
    if speed != "fast" or not isinstance(model, ClipEmbedder) or not isinstance(inner, onnx.OrtClip):
        return model
    fast = copy.copy(model)
    fast.model = onnx.int8_image_tower(inner)
    return fast


def with_runtime(model: Any, runtime: str, key: str | None = None) -> Any:
    """*model* (a proposer or an embedder) with its heavy parts run by ONNX Runtime where *runtime* picks it
    (:func:`clipsam.models.onnx.choose`); *key*: its checkpoint's SHA-256 (else its weights are hashed). ``auto``
    keeps PyTorch, with a warning in the log, if the export fails; ``onnx`` raises."""
    from . import onnx

    exportable = isinstance(model, (SamProposer, ClipEmbedder))
    device = getattr(model, "device", "cpu")
    if onnx.choose(runtime, device, exportable, getattr(model, "name", type(model).__name__)) != "onnx":
        return model
    try:
        if isinstance(model, SamProposer):
            fast = SamProposer(onnx.onnx_sam(model.model, key), device, name=model.name, fast=model.fast,
                               precision=model.precision)
        else:
            fast = copy.copy(model)
            fast.model = onnx.onnx_clip(model.model, model.image_size, key)
    except ModelError as exc:
        if runtime == "onnx":
            raise
        log.warning("%s stays in PyTorch: %s", model.name, exc)
        return model
    fast.runtime = "onnx"
    return fast
