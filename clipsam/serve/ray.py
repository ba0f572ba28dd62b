"""``clipsam serve --ray``: the same app as a Ray Serve application, N replicas each holding its own models (one GPU
per replica where CUDA is present), behind Ray Serve's HTTP proxy. Locally it starts a Ray instance; with
``RAY_ADDRESS`` set (or on a cluster's head node) it joins that cluster. Needs ``pip install 'ray[serve]'``.

Each replica is a whole ``clipsam serve``: its own bounded queue, embedding cache and Label Studio state. Ray's proxy
spreads requests over them, so a second click on an image may land on a replica that has not embedded it yet, and a
Label Studio project's ``/setup`` reaches one replica only: give ``--label-studio-url`` and ``--label-studio-key``
so that every replica can fetch task images.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["application", "run"]


class ClipsamReplica:
    """One replica: a segmenter built from *spec* (the :class:`~clipsam.Segmenter` arguments), its service and app."""

    def __init__(self, spec: dict[str, Any], limits: dict[str, Any], api_key: str | None, ls_url: str | None,
                 ls_key: str | None) -> None:
        from ..segmenter import Segmenter
        from . import Limits, Service
        from .app import create_app
        from .fetch import LabelStudioAccess
        from .labelstudio import LabelStudioBackend

        seg = Segmenter(**spec)
        _ = seg.proposer, seg.embedder, seg.text_bank  # load once, before the first request
        self.service = Service(seg, Limits(**limits))
        access = LabelStudioAccess(ls_url, ls_key) if ls_url else None
        self.asgi = create_app(self.service, api_key=api_key,
                              label_studio=LabelStudioBackend(self.service, access))
        log.info("clipsam replica ready in process %d", os.getpid())

    def __serve_build_asgi_app__(self) -> Any:  # Ray Serve's hook: the replica's ASGI app, built after __init__
        return self.asgi


def application(spec: dict[str, Any], limits: dict[str, Any], *, replicas: int, api_key: str | None = None,
                ls_url: str | None = None, ls_key: str | None = None) -> Any:
    """The bound Ray Serve application: *replicas* copies of :class:`ClipsamReplica`, one GPU each when CUDA is
    present; each takes at most its workers + queue requests at once, and Ray's proxy answers 503 past that."""
    import torch
    from ray import serve

    gpus = 1 if torch.cuda.is_available() else 0
    ongoing = int(limits["workers"]) + int(limits["queue"])
    deployment = serve.deployment(name="clipsam", num_replicas=replicas, max_ongoing_requests=ongoing,
                                  max_queued_requests=ongoing * replicas,
                                  ray_actor_options={"num_gpus": gpus, "num_cpus": 0 if gpus else 1})(
        serve.ingress()(ClipsamReplica))
    return deployment.bind(spec, limits, api_key, ls_url, ls_key)


def run(app: Any, host: str, port: int, on_ready: Callable[[], None] | None = None) -> None:
    """Start (or join) Ray, serve *app* on ``host:port``, call *on_ready* once every replica answers, and block until
    SIGINT or SIGTERM; then delete the application and leave Ray."""
    import ray
    from ray import serve

    ray.init(address=os.environ.get("RAY_ADDRESS") or None, ignore_reinit_error=True, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="clipsam", route_prefix="/", blocking=False)
        if on_ready is not None:
            on_ready()
        stop.wait()
        log.info("stopping the clipsam application")
    finally:
        serve.shutdown()
        ray.shutdown()
