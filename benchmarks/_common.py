"""Shared helpers of the benchmarks: models with real or random weights, test photos, memory readings."""

from __future__ import annotations

import os
import platform
import resource
import time

import numpy as np
from PIL import Image


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def photo(long_side: int | None = None, pixels: int | None = None, name: str = "chelsea") -> np.ndarray:
    """scikit-image's sample photo resized to a long side or to about *pixels* pixels."""
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    w, h = img.size
    scale = long_side / max(w, h) if long_side else (pixels / (w * h)) ** 0.5
    return np.asarray(img.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC))


def sam_model(name: str = "vit_b", seed: int = 0):
    """SAM with its real weights when they are in the cache, else the same architecture with random weights."""
    import torch
    from segment_anything import sam_model_registry

    from clipsam import weights as W

    model = sam_model_registry[name]()
    if W.is_cached(name):
        model.load_state_dict(W.load_state_dict(W.ensure(name, download=False), name))
        return model.eval(), "real"
    torch.manual_seed(seed)
    model = sam_model_registry[name]()
    return model.eval(), "random"


def clip_model(name: str = "ViT-B-16/openai", seed: int = 0):
    """(model, preprocess, tokenizer, weights-kind) with real weights when cached, else random ones."""
    import open_clip
    import torch

    from clipsam import weights as W

    arch = name.split("/")[0]
    if W.is_cached(name):
        from clipsam.models.build import build_embedder

        emb = build_embedder(name, "cpu", download=False)
        return emb.model, emb.preprocess, emb.tokenizer, "real"
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch + "-quickgelu", pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(arch), "random"


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def best_ious(reference: list, candidates: list) -> np.ndarray:
    """For each *reference* RLE, its best IoU with any of *candidates*, exactly: the masks bit-packed once, each
    pair's intersection a popcount of their AND (ragged random-weight masks have too many runs for pycocotools'
    pairwise IoU)."""
    from clipsam.core import masks as M

    if not reference or not candidates:
        return np.zeros(len(reference))

    def packed(rles: list) -> np.ndarray:
        return np.stack([np.packbits(M.decode(r).ravel()) for r in rles])

    a, b = packed(reference), packed(candidates)
    area_a, area_b = np.bitwise_count(a).sum(1), np.bitwise_count(b).sum(1)
    best = np.empty(len(a))
    for i in range(len(a)):
        inter = np.bitwise_count(a[i][None] & b).sum(1)
        union = area_a[i] + area_b - inter
        best[i] = np.max(np.where(union > 0, inter / np.maximum(union, 1), 0.0))
    return best
