"""The HTTP app of ``clipsam serve`` (FastAPI): clipsam's own endpoints under ``/v1`` (query, everything, prompt;
answers are :meth:`Segmentation.to_dict` JSON, masks as COCO RLE), Label Studio's ML backend protocol
(``/setup``, ``/predict``, ``/webhook``, ``/versions``), ``/health`` and OpenAPI docs at ``/docs``. A prompt's
answer adds ``logits_id``: pass ``mask_from="<logits_id>:<i>"`` with the next clicks to refine its mask *i*.

Every error is one line of JSON, ``{"error": "..."}``, with a 4xx for what the client sent (400 bad input, 401 no
or wrong key, 413 too large, 422 malformed fields) and 503 / 504 when the server is busy or a request ran too long.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from typing import Any

try:
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("clipsam serve needs FastAPI and uvicorn: pip install 'clipsam[serve]'") from e

from ..errors import ClipsamError, ConfigError, ImageError, PromptError, WeightsError
from .labelstudio import LabelStudioBackend
from .service import Busy, Service, TimedOut, TooLarge

log = logging.getLogger(__name__)

__all__ = ["create_app"]

OPEN_PATHS = ("/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")
STATUS = ((Busy, 503), (TimedOut, 504), (TooLarge, 413), (WeightsError, 503),
          ((ImageError, PromptError, ConfigError), 400), (ClipsamError, 400))


def _status(e: Exception) -> int:
    return next(code for kinds, code in STATUS if isinstance(e, kinds))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class BodyLimit:
    """ASGI middleware: a request body over *limit* bytes is answered 413 (by its Content-Length before anything is
    read, or when the streamed body passes the limit)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_error(send, 413, f"the request body is larger than this server's limit of "
                                                f"{self.limit} bytes (clipsam serve --max-request-mb)")
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(f"the request body is larger than this server's limit of {self.limit} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except TooLarge as e:
            await _send_error(send, 413, str(e))


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": _one_line(message)}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _authorised(headers: Any, key: str) -> bool:
    """``Authorization: Bearer <key>``, ``X-API-Key: <key>``, or HTTP basic auth with *key* as the password (what
    Label Studio sends for a model connected with basic auth)."""
    given = headers.get("x-api-key")
    auth = headers.get("authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token"):
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


def _json_list(text: str | None, name: str) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise PromptError(f"{name} must be JSON, e.g. [[120, 80]] for points or [10, 20, 200, 160] for a box, got "
                          f"{text[:60]!r}") from None


def create_app(service: Service, *, api_key: str | None = None, label_studio: LabelStudioBackend | None = None
               ) -> FastAPI:
    """The FastAPI app for *service*; with *api_key*, every endpoint but ``/health`` and the docs needs it."""
    app = FastAPI(title="clipsam", summary="Text-prompted, hierarchical segmentation with SAM and CLIP",
                  description=__doc__)
    _errors(app)

    @app.middleware("http")
    async def _key(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path not in OPEN_PATHS and not _authorised(request.headers, api_key):
            return JSONResponse({"error": "this server needs its API key: Authorization: Bearer <key> (or X-API-Key,"
                                          " or basic auth with the key as password)"}, status_code=401)
        return await call_next(request)

    @app.get("/health", summary="Liveness, models, queue and embedding-cache counters")
    async def health() -> dict[str, Any]:
        return service.health()

    _clipsam_routes(app, service)
    _label_studio_routes(app, service, label_studio or LabelStudioBackend(service))
    app.add_middleware(BodyLimit, limit=service.limits.max_request_bytes)  # outermost: before any body is read
    return app


def _errors(app: FastAPI) -> None:
    """Every error as one line of JSON with its status."""

    @app.exception_handler(ClipsamError)
    async def _clipsam_error(request: Request, e: ClipsamError) -> JSONResponse:
        return JSONResponse({"error": _one_line(str(e))}, status_code=_status(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": _one_line(f"{where}: {first.get('msg', 'invalid request')}")}, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": _one_line(f"internal error: {type(e).__name__}: {e}")}, status_code=500)


def _clipsam_routes(app: FastAPI, service: Service) -> None:
    """``/v1/query``, ``/v1/everything``, ``/v1/prompt``: an uploaded image in, :meth:`Segmentation.to_dict` out."""

    async def _image(upload: UploadFile) -> Any:
        return service.image(await upload.read(), upload.filename or "upload")

    @app.post("/v1/query", summary="Regions matching a text query (Segmenter.segment)")
    async def query(image: UploadFile = File(...), query: str = Form(..., examples=["dog, cat"]),
                    refine: bool = Form(False), include_parts: bool = Form(True),
                    strategy: str = Form("grid")) -> dict[str, Any]:
        pixels = await _image(image)
        out = await service.run(lambda: service.seg.segment(pixels, query, refine=refine, strategy=strategy,
                                                            include_parts=include_parts))
        return out.to_dict()

    @app.post("/v1/everything", summary="Every region, labelled with the taxonomy (Segmenter.segment_everything)")
    async def everything(image: UploadFile = File(...), label: bool = Form(True),
                         include_parts: bool = Form(True)) -> dict[str, Any]:
        pixels = await _image(image)
        out = await service.run(lambda: service.seg.segment_everything(pixels, label=label,
                                                                       include_parts=include_parts))
        return out.to_dict()

    @app.post("/v1/prompt", summary="SAM's masks for clicks, a box and/or an earlier mask (Segmenter.segment_prompt)")
    async def prompt(image: UploadFile = File(...), points: str | None = Form(None, examples=["[[120, 80]]"]),
                     labels: str | None = Form(None, examples=["[1]"]),
                     box: str | None = Form(None, examples=["[10, 20, 200, 160]"]),
                     mask_from: str | None = Form(None, description="'<logits_id>:<index>' of an earlier answer: "
                                                  "refine that mask"),
                     multimask: bool | None = Form(None)) -> dict[str, Any]:
        pts, lbls, bx = _json_list(points, "points"), _json_list(labels, "labels"), _json_list(box, "box")
        prior = service.logits(mask_from) if mask_from else None
        pixels = await _image(image)
        out = await service.run(lambda: service.seg.segment_prompt(pixels, points=pts, labels=lbls, box=bx,
                                                                   mask=prior, multimask=multimask))
        return {**out.to_dict(), "logits_id": service.keep_logits(out.low_res_logits)}


def _label_studio_routes(app: FastAPI, service: Service, ls: LabelStudioBackend) -> None:
    """Label Studio's ML backend protocol."""

    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ConfigError("the request body must be a JSON object")
        return body

    @app.post("/setup", summary="Label Studio: a project connects (its labeling config, host and token)")
    async def setup(request: Request) -> dict[str, Any]:
        return ls.setup(await _body(request))

    @app.post("/predict", summary="Label Studio: pre-annotations for tasks, or an interactive mask for a context")
    async def predict(request: Request) -> dict[str, Any]:
        body = await _body(request)
        return await service.run(ls.predict, body)

    @app.post("/webhook", summary="Label Studio: events (accepted; clipsam does not train)")
    async def webhook(request: Request) -> dict[str, Any]:
        await _body(request)
        return {"status": "ok"}

    @app.get("/versions", summary="Label Studio: the model versions")
    async def versions() -> dict[str, Any]:
        return {"versions": [service.model_version]}
