"""open_clip models behind the :class:`~clipsam.models.base.RegionEmbedder` interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image


class ClipEmbedder:
    """An open_clip model (with its preprocess and tokenizer) as a region embedder.

    Args:
        model: an open_clip ``CLIP``-like module with ``encode_image`` and ``encode_text``.
        preprocess: the model's eval transform, ``PIL.Image -> (3, S, S) tensor``.
        tokenizer: ``list[str] -> (M, L) int tensor``.
        device: torch device.
        name: registry name, for messages.
        cache_key: identifies the weights for the on-disk text cache (``None``: no disk cache).
        batch_size: crops per forward pass.
        precision: ``fp32`` or ``bf16`` (autocast on CUDA only).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        device: torch.device | str = "cpu",
        name: str = "clip",
        cache_key: str | None = None,
        batch_size: int = 64,
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
        self.batch_size = int(batch_size)
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
        for start in range(0, len(texts), 256):
            tokens = self.tokenizer(list(texts[start:start + 256])).to(self.device)
            with self._autocast():
                out.append(_unit(self.model.encode_text(tokens)))
        return np.concatenate(out) if out else np.zeros((0, self._dim()), dtype=np.float32)

    def _autocast(self):
        enabled = self.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        return int(proj.shape[-1]) if proj is not None else 0


def _unit(feats: torch.Tensor) -> np.ndarray:
    feats = feats.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32)
