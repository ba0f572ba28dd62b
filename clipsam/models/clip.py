"""open_clip models behind the :class:`~clipsam.models.base.RegionEmbedder` interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

#: Crops and texts per forward pass on a CPU: ViT-B/16's activations for a few crops stay in cache, for 64 they run
#: from memory. On a 2-core x86 CPU, 64 crops took 18.2 s in PyTorch (14.7 s in ONNX Runtime) as one batch and 15.1 s
#: (12.9 s) four at a time; 256 texts 15.9 s (11.1 s) at once and 11.3 s (9.2 s) 32 at a time, with bit-identical
#: embeddings (``benchmarks/onnx_cpu.py``, RESULTS.md, issue 25). Elsewhere (CUDA) the larger batches stay.
CPU_IMAGE_BATCH, CPU_TEXT_BATCH = 4, 32


class ClipEmbedder:
    """An open_clip model (with its preprocess and tokenizer) as a region embedder.

    Args:
        model: an open_clip ``CLIP``-like module with ``encode_image`` and ``encode_text``.
        preprocess: the model's eval transform, ``PIL.Image -> (3, S, S) tensor``.
        tokenizer: ``list[str] -> (M, L) int tensor``.
        device: torch device.
        name: registry name, for messages.
        cache_key: identifies the weights for the on-disk text cache (``None``: no disk cache).
        batch_size: crops per forward pass (``None``: :data:`CPU_IMAGE_BATCH` on a CPU, 64 elsewhere); texts go
            :data:`CPU_TEXT_BATCH` a pass on a CPU, 256 elsewhere.
        precision: ``fp32`` or ``bf16`` (autocast on CUDA only).
    """

    #: what runs its image and text towers: ``torch`` or ``onnx`` (:mod:`clipsam.models.onnx`)
    runtime = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        device: torch.device | str = "cpu",
        name: str = "clip",
        cache_key: str | None = None,
        batch_size: int | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.precision = precision
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.cache_key = cache_key
        cpu = self.device.type == "cpu"
        self.batch_size = int(batch_size) if batch_size else (CPU_IMAGE_BATCH if cpu else 64)
        self.text_batch = CPU_TEXT_BATCH if cpu else 256
        size: Any = getattr(getattr(model, "visual", None), "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(min(scale.exp().item(), 100.0)) if torch.is_tensor(scale) else 100.0

    @torch.inference_mode()
    def embed_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out: list[np.ndarray] = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(c)) for c in crops[start:start + self.batch_size]])
            with self._autocast():
                feats = self.model.encode_image(batch.to(self.device))
            out.append(_unit(feats))
        return np.concatenate(out) if out else np.zeros((0, self._dim()), dtype=np.float32)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.text_batch):
            tokens = self.tokenizer(list(texts[start:start + self.text_batch])).to(self.device)
            with self._autocast():
                out.append(_unit(self.model.encode_text(tokens)))
        return np.concatenate(out) if out else np.zeros((0, self._dim()), dtype=np.float32)

    def dense_unsupported(self) -> str | None:
        """``None`` if :meth:`dense_features` works for this model, else why not."""
        visual = getattr(self.model, "visual", None)
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if visual is None or blocks is None or not hasattr(visual, "conv1"):
            return f"{self.name}: dense features need an open_clip VisionTransformer (ResNet and timm towers lack it)"
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "proj", None) is None:
            return f"{self.name}: dense features need a ViT with a final projection and no attention pooling"
        if not isinstance(getattr(blocks[-1], "attn", None), torch.nn.MultiheadAttention):
            return f"{self.name}: the last block's attention is not a torch MultiheadAttention"
        return None

    @torch.inference_mode()
    def dense_features(self, image: np.ndarray, long_side: int | None = None) -> np.ndarray:
        """``(h, w, D)`` unit patch embeddings of a whole ``(H, W, 3) uint8`` image in the text space.

        The MaskCLIP reading of a ViT (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022): the last
        block's query-key attention is what mixes every patch into a global summary, so each patch token is read
        through the last block's *value* and output projections only (no residual, no MLP -- as ClearCLIP, Lan et
        al. ECCV 2024, found best), then the final norm and projection into the text space. The image keeps its
        aspect ratio; the long side is *long_side* pixels (default twice the model's input size: a 28-patch grid
        for ViT-B/16), with the position embedding resized to the grid.
        """
        why = self.dense_unsupported()
        if why:
            raise ValueError(why)
        with self._autocast():
            seq, (gh, gw) = self._tokens(image, long_side)
            visual = self.model.visual
            transformer = visual.transformer
            for block in transformer.resblocks[:-1]:
                seq = self._block(block, seq)
            last = transformer.resblocks[-1]
            attn = last.attn
            d = attn.embed_dim
            bias = attn.in_proj_bias[2 * d:] if attn.in_proj_bias is not None else None
            value = torch.nn.functional.linear(last.ln_1(seq), attn.in_proj_weight[2 * d:], bias)
            feats = visual.ln_post(attn.out_proj(value)[:, 1:]) @ visual.proj
        return _unit(feats[0]).reshape(gh, gw, -1)

    def _block(self, block: torch.nn.Module, seq: torch.Tensor) -> torch.Tensor:
        if getattr(self.model.visual.transformer, "batch_first", True):
            return block(seq)
        return block(seq.transpose(0, 1)).transpose(0, 1)

    def _tokens(self, image: np.ndarray, long_side: int | None) -> tuple[torch.Tensor, tuple[int, int]]:
        """The ViT's input sequence (class token first, after ``ln_pre``) for the whole image on a patch grid
        whose long side is *long_side* pixels, and the grid's shape."""
        visual = self.model.visual
        patch = visual.conv1.kernel_size[0]
        long_side = int(long_side or 2 * self.image_size)
        h, w = image.shape[:2]
        scale = long_side / max(h, w)
        gh, gw = max(1, round(h * scale / patch)), max(1, round(w * scale / patch))
        pil = Image.fromarray(np.ascontiguousarray(image)).resize((gw * patch, gh * patch), Image.Resampling.BICUBIC)
        mean, std = _normalisation(self.preprocess)
        x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
        x = ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None].to(self.device)
        tokens = visual.conv1(x.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # (1, gh*gw, width)
        pos = visual.positional_embedding.to(tokens.dtype)
        side = int(round((pos.shape[0] - 1) ** 0.5))
        if (gh, gw) != (side, side):
            grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
            grid = torch.nn.functional.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            grid = grid.to(tokens.dtype).permute(0, 2, 3, 1).reshape(gh * gw, -1)
        else:
            grid = pos[1:]
        cls = (visual.class_embedding.to(tokens.dtype) + pos[0])[None, None]
        return visual.ln_pre(torch.cat([cls, tokens + grid[None]], dim=1)), (gh, gw)

    def _autocast(self):
        enabled = self.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        return int(proj.shape[-1]) if proj is not None else 0


#: OpenAI CLIP's normalisation (open_clip's default), used when the preprocess does not say.
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalisation(preprocess: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    for t in getattr(preprocess, "transforms", ()):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    return _OPENAI_MEAN, _OPENAI_STD


def _unit(feats: torch.Tensor) -> np.ndarray:
    feats = feats.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32)
