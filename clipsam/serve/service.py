"""What ``clipsam serve`` shares between requests: the segmenter (models loaded once, embeddings cached by image
content), a bounded number of model calls at once with a bounded queue in front (full: 503, never an unbounded
backlog), a per-request timeout, image limits, and counters for ``/health``."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..core.image import load_image
from ..errors import ClipsamError, ImageError, PromptError

log = logging.getLogger(__name__)

#: prompt results whose low-resolution logits are kept for refining prompts (``mask_from``)
LOGITS_KEPT = 32

__all__ = ["Busy", "Limits", "Service", "TimedOut", "TooLarge"]


@dataclass(frozen=True)
class Limits:
    """A server's bounds.

    Attributes:
        max_request_bytes: largest request body (an uploaded image, a Label Studio batch), bytes.
        max_pixels: largest image, pixels (checked from the header, before decoding).
        workers: model calls running at once (threads sharing the models; 1 suits a CPU, whose cores torch
            already uses).
        queue: requests that may wait for a worker; one more is answered 503.
        timeout_s: seconds a request may wait and run before it is answered 504.
        cache_images: images whose SAM embedding is kept for later clicks and queries.
    """

    max_request_bytes: int = 64 * 2 ** 20
    max_pixels: int = 40_000_000
    workers: int = 1
    queue: int = 16
    timeout_s: float = 300.0
    cache_images: int = 16

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_pixels", "workers", "cache_images"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue < 0 or self.timeout_s <= 0:
            raise ValueError(f"queue must be >= 0 and timeout_s > 0, got {self.queue} and {self.timeout_s}")


class Busy(ClipsamError):
    """Every worker is busy and the queue is full (HTTP 503)."""


class TooLarge(ImageError):
    """An image or request over the server's limits (HTTP 413)."""


class TimedOut(ClipsamError):
    """The request ran past the server's timeout (HTTP 504)."""


class Service:
    """A segmenter behind a bounded worker pool.

    Args:
        segmenter: a :class:`~clipsam.Segmenter` (shared by all requests; it is thread-safe).
        limits: the server's :class:`Limits`.
        model_version: what predictions are tagged with (Label Studio shows it).
    """

    def __init__(self, segmenter: Any, limits: Limits | None = None, model_version: str | None = None) -> None:
        self.seg = segmenter
        self.limits = limits or Limits()
        self.seg.caches.sam.size = max(self.seg.caches.sam.size, self.limits.cache_images)
        names = segmenter.model_names()
        self.model_version = model_version or f"clipsam-{names.get('sam')}-{names.get('clip')}"
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="clipsam-serve")
        self._slots = threading.BoundedSemaphore(self.limits.workers + self.limits.queue)
        self._lock = threading.Lock()
        self._logits: OrderedDict[str, Any] = OrderedDict()
        self.counts = {"requests": 0, "done": 0, "failed": 0, "busy": 0, "timed_out": 0, "running": 0}
        self.started = time.time()

    def _count(self, key: str, by: int = 1) -> None:
        with self._lock:
            self.counts[key] += by

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a worker thread, within the queue bound and the timeout.

        Raises:
            Busy: the workers and the queue are full (nothing was started).
            TimedOut: the call did not finish in time (it still finishes, and holds its slot until then).
        """
        self._count("requests")
        if not self._slots.acquire(blocking=False):
            self._count("busy")
            raise Busy(f"the server is busy: {self.limits.workers} worker(s) running and {self.limits.queue} "
                       "request(s) queued; retry later")

        def work() -> Any:
            self._count("running")
            try:
                return fn(*args)
            finally:
                self._count("running", -1)

        future = self._pool.submit(work)
        future.add_done_callback(lambda f: self._finished(f))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.limits.timeout_s)
        except asyncio.TimeoutError:
            self._count("timed_out")
            raise TimedOut(f"the request ran past the server's timeout of {self.limits.timeout_s:g} s") from None

    def _finished(self, future: Any) -> None:
        self._slots.release()
        self._count("failed" if future.exception() is not None else "done")

    def image(self, data: bytes, name: str = "upload") -> np.ndarray:
        """Decode an uploaded image within the pixel limit: ``(H, W, 3) uint8``."""
        from PIL import Image, UnidentifiedImageError

        if not data:
            raise ImageError(f"{name}: the image is empty")
        try:
            pil = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f"{name}: not an image Pillow can read ({type(e).__name__})") from None
        if pil.width * pil.height > self.limits.max_pixels:
            raise TooLarge(f"{name}: the image is {pil.width}x{pil.height} = {pil.width * pil.height} pixels; this "
                           f"server takes at most {self.limits.max_pixels} (clipsam serve --max-pixels)")
        pil.filename = name  # type: ignore[attr-defined]
        return load_image(pil, max_pixels=self.limits.max_pixels)

    def keep_logits(self, logits: Any) -> str | None:
        """Keep a prompt result's low-resolution logits for a later refining prompt; returns their id."""
        if logits is None:
            return None
        token = secrets.token_urlsafe(9)
        with self._lock:
            self._logits[token] = logits
            while len(self._logits) > LOGITS_KEPT:
                self._logits.popitem(last=False)
        return token

    def logits(self, ref: str) -> Any:
        """The logits of mask *index* of an earlier prompt, from ``"<logits id>:<index>"``."""
        token, _, index = ref.partition(":")
        with self._lock:
            kept = self._logits.get(token)
        if kept is None:
            raise PromptError(f"mask_from {ref!r}: no such logits id here (ids of the last {LOGITS_KEPT} prompts are "
                              "kept)")
        if not index.isdigit() or int(index) >= len(kept):
            raise PromptError(f"mask_from {ref!r}: give '<logits id>:<mask index>' with an index below {len(kept)}")
        return kept[int(index)]

    def health(self) -> dict[str, Any]:
        cache = self.seg.caches.sam
        lookups = cache.hits + cache.misses
        with self._lock:
            counts = dict(self.counts)
        return {"status": "UP", "model_class": "clipsam", "model_version": self.model_version, "pid": os.getpid(),
                "models": self.seg.model_names(), "uptime_s": round(time.time() - self.started, 1),
                "requests": counts, "limits": asdict(self.limits),
                "embedding_cache": {"images": cache.size, "hits": cache.hits, "misses": cache.misses,
                                    "hit_rate": round(cache.hits / lookups, 4) if lookups else None}}

    def close(self) -> None:
        """Finish the running and queued calls, then stop the workers."""
        self._pool.shutdown(wait=True)
