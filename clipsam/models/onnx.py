"""ONNX Runtime for the heavy parts of SAM 1 and CLIP on a CPU (``runtime="onnx"`` / ``"auto"``).

SAM's ViT image encoder and its mask decoder (the two-way transformer and the mask heads, batched over prompts), and
CLIP's image and text towers are exported **locally** from the modules clipsam built (verified checkpoints, or the
models you pass to :meth:`~clipsam.Segmenter.from_models`) with ``torch.onnx.export`` (the dynamo exporter), once,
into ``$CLIPSAM_HOME/onnx``. Each export lives in a folder named by the weights' hash, the exporter, the opset and the
torch and onnxruntime versions; it is written under a temporary name and renamed into place, so a killed export
never leaves a half file where a later run looks. Everything around the heavy parts stays PyTorch and unchanged:
SAM's preprocessing, prompt encoder, upsampling, thresholds and NMS, so the same code paths (the fast generator,
stock's generator, prompts, full-resolution masks) run on top, and masks differ from PyTorch's only where a logit
sits within float rounding of SAM's threshold (``tests/test_onnx.py``; ``benchmarks/onnx_cpu.py``).

With ``speed="fast"``, CLIP's image tower runs a dynamic int8 quantisation of its export (:func:`int8`, made once
beside it); the text tower stays fp32.

Not exported: CLIP's dense (MaskCLIP) features for ``strategy="guided"`` and ``region_features="pooled"``, and SAM
2.1 and SAM 3 -- those run in PyTorch (``runtime="auto"`` picks per model).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.settings import RUNTIMES as _RUNTIMES
from ..errors import ConfigError, ModelError

log = logging.getLogger(__name__)

__all__ = ["OPSET", "RUNTIMES", "Graph", "OrtClip", "OrtImageEncoder", "OrtMaskDecoder", "cache_root", "choose",
           "graphs", "int8", "int8_image_tower", "onnx_clip", "onnx_sam", "unavailable",
           "weights_key"]

#: ``runtime`` values: ``torch`` (PyTorch everywhere), ``onnx`` (ONNX Runtime for SAM 1 and CLIP, CPU only; an
#: error where it cannot run), ``auto`` (ONNX Runtime for each model that has an export, on a CPU, when installed).
RUNTIMES = _RUNTIMES
#: ONNX opset of the exports (the dynamo exporter's own; older opsets go through a version converter that fails on
#: SAM's decoder).
OPSET = 18
#: Exports older than this under a temporary name are left over from a killed process and removed.
_STALE_SECONDS = 6 * 3600
#: The largest batch an exported graph accepts (prompts per decoder call, crops or texts per CLIP call).
_MAX_BATCH = 1 << 16


def unavailable() -> str | None:
    """``None`` when ONNX Runtime and the exporter are installed, else a sentence saying what to install."""
    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return f"the ONNX Runtime path needs {', '.join(missing)} (pip install 'clipsam[onnx]')"
    return None


def choose(runtime: str, device: torch.device | str, exportable: bool, what: str) -> str:
    """``"onnx"`` or ``"torch"`` for a model (*what*, for messages) on *device* under the requested *runtime*:
    ``auto`` takes ONNX Runtime where it can run, ``onnx`` insists (a :class:`~clipsam.errors.ConfigError` saying
    why not)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return "torch"
    dev = torch.device(device)
    if dev.type != "cpu":
        why: str | None = f"ONNX Runtime is clipsam's CPU path; on {dev.type} the models run in PyTorch"
    elif not exportable:
        why = f"{what} has no ONNX export in clipsam (SAM 1 and open_clip models have)"
    else:
        why = unavailable()
    if why is None:
        return "onnx"
    if runtime == "onnx":
        raise ConfigError(f"runtime='onnx': {why}; use runtime='auto' or 'torch'")
    log.debug("runtime auto: %s in PyTorch (%s)", what, why)
    return "torch"


def cache_root() -> Path:
    """Where exports live: ``$CLIPSAM_HOME/onnx``."""
    from ..weights import home

    return home() / "onnx"


def weights_key(module: torch.nn.Module) -> str:
    """SHA-256 of a module's architecture (its ``repr``) and every parameter and buffer (name, dtype, shape,
    bytes): the cache key of its exports."""
    digest = hashlib.sha256(repr(module).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _tag() -> str:
    import onnxruntime

    raw = f"dynamo-opset{OPSET}-torch{torch.__version__}-ort{onnxruntime.__version__}"
    return re.sub(r"[^A-Za-z0-9.+-]", "_", raw)


def exported(kind: str, key: str, module: torch.nn.Module, args: tuple[Any, ...], inputs: list[str],
             outputs: list[str], dynamic: tuple[Any, ...] | None) -> Path:
    """The ONNX file of *module* (exported for example *args*), from the cache or exported now, atomically."""
    folder = cache_root() / f"{kind}-{key[:24]}-{_tag()}"
    path = folder / "model.onnx"
    if path.is_file():
        return path
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        start = time.perf_counter()
        _export(module, args, tmp / "model.onnx", inputs, outputs, dynamic)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not path.is_file():  # not another process finishing the same export first
                raise
        log.info("exported %s to ONNX in %.1f s: %s", kind, time.perf_counter() - start, path)
    except Exception as exc:
        if isinstance(exc, OSError):
            raise ModelError(f"{folder}: could not write the ONNX export of {kind}: {exc.strerror or exc}") from exc
        raise ModelError(f"exporting {kind} to ONNX failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _export(module: torch.nn.Module, args: tuple[Any, ...], path: Path, inputs: list[str], outputs: list[str],
            dynamic: tuple[Any, ...] | None) -> None:
    """``torch.onnx.export`` (dynamo), silent: its progress lines and warnings are not the library's to print."""
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), args, dynamo=True, opset_version=OPSET, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=dynamic, verbose=False)
        program.save(str(path))


def _remove_stale(root: Path) -> None:
    """Temporary export folders left by killed processes (older than a few hours)."""
    now = time.time()
    for entry in root.glob(".*"):
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink() and now - entry.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)


class Graph:
    """An exported graph in an ONNX Runtime CPU session: torch tensors in, torch tensors out. Sessions are safe to
    call from several threads at once.

    *arena*: keep ONNX Runtime's CPU memory arena, which holds the largest call's buffers for the life of the session.
    Only for a graph called many times at one bounded size (SAM's decoder, :class:`OrtMaskDecoder`): without it every
    call maps and faults in fresh pages for its large tensors (4 of 13.5 s of a 16x16 grid's decoder calls on ViT-B
    were system time); with it, at 64 prompts a call, the pool grew to 14 GB (benchmarks/RESULTS.md, issue 25)."""

    def __init__(self, path: Path, part: str, arena: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = arena
        self.path, self.part = path, part
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy())
                for name, t in zip(self.inputs, tensors, strict=True)}
        return [torch.from_numpy(o) for o in self.session.run(None, feed)]


class OrtImageEncoder(torch.nn.Module):
    """SAM's image encoder run by ONNX Runtime (same input and output as ``ImageEncoderViT``)."""

    def __init__(self, graph: Graph, img_size: int) -> None:
        super().__init__()
        self.graph = graph
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.float())[0]


class _DecoderCore(torch.nn.Module):
    """The part of SAM's ``MaskDecoder`` that is exported: every mask token's logits and IoU for a batch of
    prompts (``predict_masks``); the multimask choice is a slice, made in :class:`OrtMaskDecoder`."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.predict_masks(image_embeddings, image_pe, sparse, dense)


class OrtMaskDecoder(torch.nn.Module):
    """SAM's mask decoder run by ONNX Runtime, called as ``MaskDecoder`` is. A prompt with no sparse part (a prior
    mask alone) runs the PyTorch decoder: the export takes one point or more. Prompts for one image go
    :data:`~clipsam.models.amg.CPU_DECODER_PROMPTS` a call (the same logits as one call: the decoder treats each
    prompt apart), so the session's memory arena holds one such call's buffers whatever a caller sends."""

    def __init__(self, graph: Graph, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self.torch_decoder = decoder
        self.num_mask_tokens = decoder.num_mask_tokens

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if sparse_prompt_embeddings.shape[1] == 0:
            return self.torch_decoder(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                                      multimask_output)
        from .amg import decode_in_calls

        emb, pe = image_embeddings.float(), image_pe.float()
        sparse, dense = sparse_prompt_embeddings.float(), dense_prompt_embeddings.float()
        n = len(sparse)
        if len(emb) == 1 and len(dense) == n:  # one image's prompts: a few a call, as the CPU generator sends them
            masks, iou = decode_in_calls(lambda a, b: tuple(self.graph(emb, pe, sparse[a:b], dense[a:b])), n,
                                         torch.device("cpu"))
        else:
            masks, iou = self.graph(emb, pe, sparse, dense)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]


def onnx_sam(model: torch.nn.Module, key: str | None = None) -> torch.nn.Module:
    """A copy of a ``segment_anything`` ``Sam`` whose image encoder and mask decoder run in ONNX Runtime (exported
    now or taken from the cache; *key*: the weights' hash, computed when not given). *model* is not changed and
    shares every other module (and its weights) with the copy."""
    from torch.export import Dim

    key = key or weights_key(model)
    enc = model.image_encoder
    size = int(enc.img_size)
    enc_path = exported("sam-image-encoder", key, enc, (torch.zeros(1, 3, size, size),), ["image"], ["embedding"],
                        None)
    pe = model.prompt_encoder.get_dense_pe().detach()
    dim, (h, w) = pe.shape[1], pe.shape[2:]
    batch, points = Dim("prompts", min=1, max=_MAX_BATCH), Dim("points", min=1, max=4096)
    example = (torch.zeros(1, dim, h, w), pe, torch.zeros(2, 2, dim), torch.zeros(2, dim, h, w))
    dec_path = exported("sam-mask-decoder", key, _DecoderCore(model.mask_decoder), example,
                        ["image_embeddings", "image_pe", "sparse", "dense"], ["masks", "iou"],
                        ({}, {}, {0: batch, 1: points}, {0: batch}))
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out._modules["image_encoder"] = OrtImageEncoder(Graph(enc_path, "sam-image-encoder"), size)
    out._modules["mask_decoder"] = OrtMaskDecoder(Graph(dec_path, "sam-mask-decoder", arena=True), model.mask_decoder)
    return out


class _Tower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


class OrtClip(torch.nn.Module):
    """An open_clip model whose ``encode_image`` and ``encode_text`` run in ONNX Runtime; every other attribute
    (``visual``, ``logit_scale``, what dense features read) is the PyTorch model's."""

    def __init__(self, model: torch.nn.Module, image: Graph, text: Graph) -> None:
        super().__init__()
        self.torch_model = model
        self.image_graph, self.text_graph = image, text

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.image_graph(image.float())[0]
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.text_graph(text.long())[0]
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["torch_model"], name)


def onnx_clip(model: torch.nn.Module, image_size: int, key: str | None = None) -> OrtClip:
    """An open_clip model with its image and text towers in ONNX Runtime (exported now or from the cache)."""
    from torch.export import Dim

    key = key or weights_key(model)
    batch = Dim("batch", min=1, max=_MAX_BATCH)
    image = exported("clip-image", key, _Tower(model, "encode_image"), (torch.zeros(2, 3, image_size, image_size),),
                     ["pixels"], ["features"], ({0: batch},))
    length = int(getattr(model, "context_length", 77))
    text = exported("clip-text", key, _Tower(model, "encode_text"), (torch.zeros(2, length, dtype=torch.long),),
                    ["tokens"], ["features"], ({0: batch},))
    return OrtClip(model, Graph(image, "clip-image"), Graph(text, "clip-text"))


def int8(path: Path) -> Path:
    """The dynamic int8 quantisation of an exported graph (``onnxruntime.quantization.quantize_dynamic``: weights
    int8, activations quantised batch by batch), ``model.int8.onnx`` beside it: made once, atomically."""
    out = path.with_name("model.int8.onnx")
    if out.is_file():
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(prefix=".model.int8.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(path), tmp, weight_type=QuantType.QInt8)
        os.replace(tmp, out)
    except OSError as exc:
        raise ModelError(f"{out}: could not write the int8 graph: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise ModelError(f"quantising {path.parent.name} to int8 failed: {type(exc).__name__}: {exc}"
                         .splitlines()[0]) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return out


def int8_image_tower(model: OrtClip) -> OrtClip:
    """*model* with CLIP's image tower in int8 (``speed="fast"``); the text tower stays fp32, so text embeddings
    (and their disk cache) are those of the exact path."""
    image = model.image_graph
    return OrtClip(model.torch_model, Graph(int8(image.path), f"{image.part}-int8"), model.text_graph)


def graphs(model: Any) -> list[Graph]:
    """The ONNX graphs a proposer or embedder runs (none for a PyTorch one)."""
    inner = getattr(model, "model", None)
    if isinstance(inner, OrtClip):
        return [inner.image_graph, inner.text_graph]
    return [m.graph for m in (getattr(inner, "image_encoder", None), getattr(inner, "mask_decoder", None))
            if isinstance(m, (OrtImageEncoder, OrtMaskDecoder))]
