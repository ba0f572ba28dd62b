"""``clipsam serve`` (the HTTP server and Label Studio ML backend) and ``clipsam labelstudio config``."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import typer

from ..files import atomic_write, check_outputs
from .common import (
    TAXONOMY_HELP,
    check_output_file,
    clip_option,
    device_option,
    emit_json,
    ensure_weights,
    err,
    fail,
    guard,
    json_option,
    out,
    overwrite_option,
    runtime_option,
    sam_option,
    show,
)
from .segment import _check_models_and_choices


def is_loopback(host: str) -> bool:
    """True when *host* only listens on this machine (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (socket.gaierror, ValueError):
            return False


@guard
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but loopback needs "
                             "--api-key."),
    port: int = typer.Option(9090, "--port", help="Port (Label Studio's ML backends default to 9090)."),
    taxonomy: str | None = typer.Option(None, "--taxonomy", "-t", help=TAXONOMY_HELP + " Labels everything and "
                                        "Label Studio pre-annotations with it."),
    sam: str = sam_option(),
    clip: str = clip_option(),
    device: str = device_option(),
    runtime: str = runtime_option(),
    max_side: int = typer.Option(1024, "--max-side", help="Process at this long side (pixels)."),
    min_confidence: float = typer.Option(0.3, "--min-confidence", help="Probability a label needs (else unknown)."),
    workers: int = typer.Option(1, "--workers", help="Model calls at once (threads sharing the models)."),
    queue: int = typer.Option(16, "--queue", help="Requests that may wait for a worker; more are answered 503."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds a request may wait and run (else 504)."),
    max_request_mb: float = typer.Option(64.0, "--max-request-mb", help="Largest request body, MiB (else 413)."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="Largest image, pixels (else 413)."),
    cache_images: int = typer.Option(16, "--cache-images", help="Images whose SAM embedding is kept for later "
                                     "clicks and queries."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CLIPSAM_API_KEY", show_envvar=True,
                                       help="Key every request needs (Bearer, X-API-Key or basic auth password)."),
    ls_url: str | None = typer.Option(None, "--label-studio-url", envvar="LABEL_STUDIO_URL", show_envvar=True,
                                      help="Label Studio's address, to fetch task images (default: what the project"
                                      " sends when it connects)."),
    ls_key: str | None = typer.Option(None, "--label-studio-key", envvar="LABEL_STUDIO_API_KEY", show_envvar=True,
                                      help="Label Studio API token or personal access token, to fetch task images."),
    ray: bool = typer.Option(False, "--ray", help="Serve as a Ray Serve application (pip install 'ray[serve]'): "
                             "--replicas copies, one GPU each where CUDA is present; joins RAY_ADDRESS if set.",
                             metavar=""),
    replicas: int = typer.Option(1, "--replicas", help="With --ray: replicas, each with its own models."),
    as_json: bool = json_option(),
) -> None:
    """Serve clipsam over HTTP: text queries, everything, clicks, and Label Studio's ML backend protocol.

    The models load once; every request shares them and the embedding cache. OpenAPI docs at /docs.
    """
    from ..serve import Limits

    if not is_loopback(host) and not api_key:
        fail(f"--host {show(host)} listens beyond this machine: give --api-key (or CLIPSAM_API_KEY) so that only "
             "clients with the key are answered")
    if ls_key and not ls_url:
        fail("--label-studio-key needs --label-studio-url: a key goes only to the host it is for")
    if replicas < 1 or (replicas > 1 and not ray):
        fail(f"--replicas must be at least 1 and needs --ray for more than one, got {replicas}")
    _check_models_and_choices(sam, clip, device, {"--runtime": runtime})
    try:
        limits = Limits(max_request_bytes=int(max_request_mb * 2 ** 20), max_pixels=max_pixels, workers=workers,
                        queue=queue, timeout_s=timeout, cache_images=cache_images)
    except ValueError as e:
        fail(str(e))
    spec = {"sam": sam, "clip": clip, "device": device, "runtime": runtime, "taxonomy": taxonomy,
            "max_side": max_side, "min_confidence": min_confidence}
    ensure_weights([sam, clip], show=not as_json, verb="serve")
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    ready = {"url": url, "docs": url + "/docs", "taxonomy": taxonomy, "replicas": replicas if ray else None}
    if ray:
        _serve_ray(spec, limits, replicas, host, port, api_key, ls_url, ls_key, ready, as_json)
    else:
        _serve_here(spec, limits, host, port, api_key, ls_url, ls_key, ready, as_json)


def _announce(ready: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(ready)
    else:
        out.print(f"clipsam serving on [bold]{show(ready['url'])}[/] (docs {show(ready['docs'])}); Ctrl-C stops "
                  "after the requests in flight")


def _serve_here(spec: dict[str, Any], limits: Any, host: str, port: int, api_key: str | None, ls_url: str | None,
                ls_key: str | None, ready: dict[str, Any], as_json: bool) -> None:
    try:
        import uvicorn

        from ..serve.app import create_app
        from ..serve.fetch import LabelStudioAccess
        from ..serve.labelstudio import LabelStudioBackend
    except ImportError:
        fail("clipsam serve needs FastAPI and uvicorn: pip install 'clipsam[serve]'")
    from ..segmenter import Segmenter
    from ..serve import Service

    segmenter = Segmenter(**spec)
    with err.status("loading the models…", spinner="dots") if not as_json else _quiet():
        _ = segmenter.proposer, segmenter.embedder, segmenter.text_bank  # load once, before the first request
    service = Service(segmenter, limits)
    access = LabelStudioAccess(ls_url, ls_key) if ls_url else None
    app = create_app(service, api_key=api_key, label_studio=LabelStudioBackend(service, access))
    _announce({**ready, "model_version": service.model_version}, as_json)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(limits.timeout_s) + 1)
    finally:
        service.close()


def _serve_ray(spec: dict[str, Any], limits: Any, replicas: int, host: str, port: int, api_key: str | None,
               ls_url: str | None, ls_key: str | None, ready: dict[str, Any], as_json: bool) -> None:
    from dataclasses import asdict

    try:
        from ..serve import ray as ray_serve

        app = ray_serve.application(spec, asdict(limits), replicas=replicas, api_key=api_key, ls_url=ls_url,
                                    ls_key=ls_key)
    except ImportError:
        fail("clipsam serve --ray needs Ray Serve: pip install 'ray[serve]' 'clipsam[serve]'")
    ray_serve.run(app, host, port, on_ready=lambda: _announce(ready, as_json))


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


@guard
def labelstudio_config(
    taxonomy: str = typer.Option("everyday", "--taxonomy", "-t", help=TAXONOMY_HELP),
    shape: str = typer.Option("brush", "--shape", help="brush (masks, Label Studio's RLE) or polygon."),
    smart: bool = typer.Option(True, "--smart/--no-smart", help="Add the keypoint and rectangle smart tools for "
                               "interactive clicks.", metavar=""),
    unknown: bool = typer.Option(True, "--unknown/--no-unknown", help="Offer the labels unknown / unknown part for "
                                 "regions that match no category.", metavar=""),
    path: str = typer.Option("text", "--path", help="How each region's label path shows: text (a per-region text "
                             "area) or taxonomy (a per-region <Taxonomy> of the tree, annotators can pick another)."),
    out_path: Path | None = typer.Option(None, "--out", "-o", help="Write the config to this .xml file."),
    overwrite: bool = overwrite_option(),
    as_json: bool = json_option(),
) -> None:
    """Print a ready Label Studio labeling config for a taxonomy (paste it under Settings -> Labeling Interface)."""
    from ..core.taxonomy import load_taxonomy
    from ..labelstudio import LabelConfig, label_config

    if shape not in ("brush", "polygon"):
        fail(f"--shape must be brush or polygon, got {show(shape)!r}")
    if path not in ("text", "taxonomy"):
        fail(f"--path must be text or taxonomy, got {show(path)!r}")
    check_output_file(out_path, "--out", (".xml",))
    check_outputs([("--out", out_path)], [], overwrite=overwrite)
    tax = load_taxonomy(taxonomy)
    xml = label_config(tax, shape=shape, unknown=unknown, smart=smart, path=path)
    if out_path is not None:
        atomic_write(out_path, xml.encode("utf-8"))
    if as_json:
        cfg = LabelConfig.parse(xml)
        emit_json({"taxonomy": tax.name, "shape": shape, "path": path, "labels": list(cfg.labels), "config": xml,
                   **({"written": os.fspath(out_path)} if out_path else {})})
    elif out_path is None:
        typer.echo(xml, nl=False)
    else:
        out.print(f"Label Studio config for taxonomy {show(tax.name)!r} ({shape}) written to "
                  f"[bold]{show(out_path)}[/]")

