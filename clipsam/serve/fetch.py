"""Fetching a Label Studio task's image: from Label Studio itself (uploads, local files, its storage proxies) with
the project's credential, or from any other http(s) address without it. A credential goes only to the Label Studio
host it belongs to, never along a redirect to another host; downloads are bounded in size and time."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from ..core.image import printable
from ..errors import ImageError

log = logging.getLogger(__name__)

__all__ = ["LabelStudioAccess", "fetch"]

#: seconds a Label Studio access token (exchanged from a personal access token) is used before it is renewed
ACCESS_TOKEN_TTL_S = 240.0


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urllib.parse.urlsplit(url)
    port = p.port or {"http": 80, "https": 443}.get(p.scheme)
    return p.scheme, (p.hostname or "").lower(), port


@dataclass
class LabelStudioAccess:
    """Where Label Studio is and the key that reads its files.

    Attributes:
        url: Label Studio's address (``http://127.0.0.1:8080``).
        key: a legacy API token (sent as ``Token <key>``) or a personal access token (a JWT refresh token,
            exchanged at ``/api/token/refresh`` for a short-lived access token sent as ``Bearer``).
    """

    url: str
    key: str | None = None
    _access: tuple[str, float] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def owns(self, url: str) -> bool:
        return _origin(url) == _origin(self.url)

    def header(self, timeout: float) -> str | None:
        """The ``Authorization`` header value for Label Studio, or ``None`` without a key."""
        if not self.key:
            return None
        if self.key.count(".") != 2:  # a legacy token
            return f"Token {self.key}"
        with self._lock:
            if self._access is None or time.monotonic() - self._access[1] > ACCESS_TOKEN_TTL_S:
                body = json.dumps({"refresh": self.key}).encode()
                req = urllib.request.Request(self.url.rstrip("/") + "/api/token/refresh", data=body,
                                             headers={"Content-Type": "application/json"}, method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (http(s) only)
                        self._access = (json.loads(r.read())["access"], time.monotonic())
                except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
                    raise ImageError(f"Label Studio at {self.url} did not exchange the personal access token "
                                     f"for an access token ({e})") from None
            return f"Bearer {self._access[0]}"


def fetch(url: str, access: LabelStudioAccess | None, *, max_bytes: int, timeout: float) -> bytes:
    """The bytes at *url*: a path (``/data/upload/…``) is on Label Studio (*access*); an http(s) address gets the
    credential only when it is Label Studio's own.

    Raises:
        ImageError: the address cannot be fetched, answers an error, or is larger than *max_bytes*.
    """
    shown = printable(url)
    if url.startswith("/"):
        if access is None:
            raise ImageError(f"{shown}: a Label Studio path, and the server does not know where Label Studio is "
                             "(connect the project again, or start clipsam serve with --label-studio-url)")
        url = access.url.rstrip("/") + url
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ImageError(f"{shown}: clipsam fetches http(s) addresses and Label Studio paths, not {scheme or 'this'}"
                         " (for cloud storage, let Label Studio serve the files: its storage proxy URLs work)")
    req = urllib.request.Request(url, headers={"User-Agent": "clipsam"})
    if access is not None and access.owns(url):
        auth = access.header(timeout)
        if auth:
            req.add_unredirected_header("Authorization", auth)  # never forwarded along a redirect
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (http(s) only, checked above)
            data = r.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise ImageError(f"{shown}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ImageError(f"{shown}: cannot fetch ({getattr(e, 'reason', e)})") from None
    if len(data) > max_bytes:
        raise ImageError(f"{shown}: larger than this server's limit of {max_bytes} bytes")
    return data
