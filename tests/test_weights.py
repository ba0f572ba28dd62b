"""Weight handling, tested for real against a loopback HTTP server serving checkpoints made here."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from clipsam import weights as W
from clipsam.errors import ChecksumError, UnsafeCheckpointError, WeightsError, WeightsMissingError
from clipsam.testing import tiny_sam


class _Route:
    """What the server answers: *body* (or, with *endless*, zeros until the client hangs up, no Content-Length),
    cut after *send* bytes, with a Content-Length of *length* (default the body's), *drip* seconds between bytes."""

    def __init__(self, body: bytes, status: int = 200, ctype: str = "application/octet-stream",
                 send: int | None = None, length: int | None = None, drip: float = 0.0, endless: bool = False) -> None:
        self.body, self.status, self.ctype, self.send = body, status, ctype, send
        self.length, self.drip, self.endless = length, drip, endless
        self.sent = 0


@pytest.fixture()
def server():
    """A loopback HTTP server; tests put routes in ``server.routes`` and read ``server.hits``."""
    routes: dict[str, _Route] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            route = routes.get(self.path)
            if route is None:
                route = _Route(b"<html><body>404 not found</body></html>", 404, "text/html")
            self.send_response(route.status)
            self.send_header("Content-Type", route.ctype)
            if not route.endless:
                self.send_header("Content-Length", str(route.length if route.length is not None else len(route.body)))
            self.end_headers()
            try:
                if route.endless:  # bounded, so that a client that never stops cannot hang the test
                    deadline = time.monotonic() + 20
                    while route.sent < 1 << 30 and time.monotonic() < deadline:
                        self.wfile.write(b"\0" * 65536)
                        route.sent += 65536
                elif route.drip:
                    for k in range(min(len(route.body), 150)):
                        self.wfile.write(route.body[k:k + 1])
                        self.wfile.flush()
                        route.sent += 1
                        time.sleep(route.drip)
                else:
                    self.wfile.write(route.body[: route.send if route.send is not None else len(route.body)])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            if route.send is not None or route.endless or route.drip:
                self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.routes, httpd.hits = routes, hits
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _sam_checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(tiny_sam(seed=3).state_dict(), buf)  # the official SAM format: a plain state dict
    return buf.getvalue()


def _register(server, registry, path: str, body_for_hash: bytes, name: str = "test-sam",
              size: int | None = None) -> W.Checkpoint:
    ckpt = W.Checkpoint(name=name, family="sam", arch="vit_b", url=server.base + path,
                        sha256=hashlib.sha256(body_for_hash).hexdigest(), filename=f"{name}.pth", size=size)
    W.register(ckpt, replace=True)
    return ckpt


def _cache_files() -> list[str]:
    """The cache's files, less the user's stamp-signing key (made on first use, kept)."""
    folder = W.cache_dir()
    return sorted(n for n in os.listdir(folder) if n != ".stamp-key") if folder.exists() else []


def test_good_checkpoint_downloads_verifies_and_loads(server, registry):
    body = _sam_checkpoint_bytes()
    server.routes["/good.pth"] = _Route(body)
    _register(server, registry, "/good.pth", body)
    seen = []
    path = W.ensure("test-sam", progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == body
    assert seen[-1] == (len(body), len(body))
    assert _cache_files() == ["test-sam.pth", "test-sam.pth.verified.json"]
    state = W.load_state_dict(path, "test-sam")
    model = tiny_sam(seed=0)
    model.load_state_dict(state)  # the real architecture accepts it
    ref = tiny_sam(seed=3).state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    # cached and stamped: no second request, no re-hash needed
    assert W.ensure("test-sam") == path
    assert server.hits == ["/good.pth"]
    assert [r.status for r in W.verify(["test-sam"])] == ["ok"]


def test_wrong_hash_is_refused_and_leaves_nothing(server, registry):
    body = _sam_checkpoint_bytes()
    server.routes["/tampered.pth"] = _Route(body + b"x")
    _register(server, registry, "/tampered.pth", body)
    with pytest.raises(ChecksumError, match="SHA-256 mismatch.*not saved"):
        W.ensure("test-sam")
    assert _cache_files() == []


def test_truncated_download_is_refused_and_leaves_nothing(server, registry):
    body = _sam_checkpoint_bytes()
    server.routes["/short.pth"] = _Route(body, send=len(body) // 2)
    _register(server, registry, "/short.pth", body)
    with pytest.raises(WeightsError, match="stopped early|SHA-256 mismatch"):
        W.ensure("test-sam")
    assert _cache_files() == []


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_error_page_is_refused(server, registry, ctype):
    page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    server.routes["/login.pth"] = _Route(page, ctype=ctype)
    _register(server, registry, "/login.pth", page)  # even with a matching hash, HTML is not a checkpoint
    with pytest.raises(WeightsError, match="HTML page"):
        W.ensure("test-sam")
    assert _cache_files() == []


def test_http_404_gives_the_missing_weights_message(server, registry):
    _register(server, registry, "/nowhere.pth", b"anything")
    with pytest.raises(WeightsMissingError) as info:
        W.ensure("test-sam")
    msg = str(info.value)
    assert "404" in msg and "clipsam weights import test-sam" in msg and server.base in msg
    assert _cache_files() == []


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))  # would run on unpickling if clipsam allowed it


def test_pickle_with_code_payload_is_refused(server, registry, tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": _Payload(str(marker))}, buf)
    body = buf.getvalue()
    server.routes["/evil.pth"] = _Route(body)
    _register(server, registry, "/evil.pth", body)  # the hash matches: the payload must still not run
    with pytest.raises(UnsafeCheckpointError, match="objects other than tensors"):
        W.ensure("test-sam")
    assert not marker.exists()
    assert _cache_files() == []
    evil = tmp_path / "evil.pth"
    evil.write_bytes(body)
    with pytest.raises(UnsafeCheckpointError):
        W.import_file("test-sam", evil)
    assert not marker.exists() and _cache_files() == []


def test_offline_mode_names_file_url_and_import_command(registry, monkeypatch, server):
    _register(server, registry, "/good.pth", b"x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissingError) as info:
        W.ensure("test-sam")
    msg = str(info.value)
    assert "offline" in msg and "test-sam.pth" in msg and "/good.pth" in msg
    assert "clipsam weights import test-sam" in msg
    assert server.hits == []
    with pytest.raises(WeightsMissingError, match="switched off"):
        W.ensure("test-sam", download=False)


def test_import_verifies_then_copies(tmp_path, registry, server):
    body = _sam_checkpoint_bytes()
    _register(server, registry, "/unused.pth", body)
    good = tmp_path / "mine.pth"
    good.write_bytes(body)
    bad = tmp_path / "other.pth"
    bad.write_bytes(body[:-10])
    with pytest.raises(ChecksumError, match="other.pth"):
        W.import_file("test-sam", bad)
    assert _cache_files() == []
    with pytest.raises(WeightsMissingError, match="no such file"):
        W.import_file("test-sam", tmp_path / "absent.pth")
    path = W.import_file("test-sam", good)
    assert path.read_bytes() == body and W.ensure("test-sam") == path


def test_corrupted_cache_is_detected(tmp_path, registry, server):
    body = _sam_checkpoint_bytes()
    _register(server, registry, "/unused.pth", body)
    src = tmp_path / "mine.pth"
    src.write_bytes(body)
    path = W.import_file("test-sam", src)
    with open(path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00" * 16)
    assert [r.status for r in W.verify(["test-sam"])] == ["mismatch"]
    with pytest.raises(ChecksumError, match="delete it"):
        W.ensure("test-sam")


def test_torchscript_checkpoint_loads_state_dict(tmp_path, registry):
    module = torch.jit.trace(torch.nn.Linear(3, 2), torch.zeros(1, 3))
    path = tmp_path / "ts.pt"
    torch.jit.save(module, str(path))
    ckpt = W.Checkpoint(name="ts", family="clip", arch="x", url="http://127.0.0.1:9/ts.pt",
                        sha256=W.sha256_file(path), filename="ts.pt", format="torchscript")
    W.register(ckpt)
    state = W.load_state_dict(path, ckpt)
    assert set(state) == {"weight", "bias"}
    assert W.import_file("ts", path).is_file()


def test_registry_is_well_formed():
    import open_clip
    from segment_anything import sam_model_registry

    assert {"vit_b", "vit_l", "vit_h", "ViT-B-16/openai"} <= set(W.REGISTRY)
    for ckpt in W.REGISTRY.values():
        assert ckpt.url.startswith("https://")
        if ckpt.extra.get("backend") == "sam3":  # Meta publishes no hash: pinned on first use (see README)
            assert ckpt.sha256 == "" and ckpt.format == "safetensors" and ckpt.extra["hf_repo"] == "facebook/sam3"
            assert "SAM License" in ckpt.license
            continue
        assert len(ckpt.sha256) == 64
        assert ckpt.size and ckpt.size > 100_000_000, ckpt.name  # pinned: a download stops at this size
        if ckpt.family == "sam" and ckpt.extra.get("backend") == "sam2":
            from clipsam.models.sam2 import CONFIGS

            assert ckpt.arch in CONFIGS and ckpt.size
        elif ckpt.family == "sam":
            assert ckpt.arch in sam_model_registry
        else:
            assert ckpt.arch in open_clip.list_models()
            assert ckpt.sha256 in ckpt.url  # OpenAI publishes the hash in the URL
    assert W.get("sam_vit_b").name == "vit_b"
    with pytest.raises(WeightsError, match="unknown checkpoint"):
        W.get("vit_z")
    with pytest.raises(WeightsError, match="already registered"):
        W.register(W.REGISTRY["vit_b"])


def test_cache_dir_follows_clipsam_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSAM_HOME", str(tmp_path / "h"))
    assert W.cache_dir() == tmp_path / "h" / "weights"
    assert W.path_for("vit_b") == tmp_path / "h" / "weights" / "sam_vit_b_01ec64.pth"


def test_content_length_that_disagrees_with_the_pinned_size_is_refused(server, registry):
    body = _sam_checkpoint_bytes()
    server.routes["/big.pth"] = _Route(body, length=len(body) + 1000)
    _register(server, registry, "/big.pth", body, size=len(body))
    with pytest.raises(WeightsError, match=f"announces {len(body) + 1000:,} bytes but 'test-sam' is {len(body):,}"):
        W.ensure("test-sam")
    assert _cache_files() == []


def test_endless_body_stops_at_the_pinned_size(server, registry):
    size = 300_000
    route = _Route(b"", endless=True)
    server.routes["/endless.pth"] = route
    _register(server, registry, "/endless.pth", b"whatever", size=size)
    with pytest.raises(WeightsError, match="sent more than the 300,000 bytes"):
        W.ensure("test-sam")
    assert _cache_files() == []
    assert route.sent < 64 * 1024 * 1024  # stopped reading long before the server's own 1 GB bound


def test_endless_body_of_unknown_size_is_capped(server, registry, monkeypatch):
    monkeypatch.setattr(W, "MAX_UNKNOWN_BYTES", 500_000)
    server.routes["/endless.pth"] = _Route(b"", endless=True)
    _register(server, registry, "/endless.pth", b"whatever")  # no size pinned, no Content-Length
    with pytest.raises(WeightsError, match="sent more than the 500,000 bytes"):
        W.ensure("test-sam")
    assert _cache_files() == []


def test_a_server_that_drips_is_abandoned(server, registry):
    body = _sam_checkpoint_bytes()
    server.routes["/drip.pth"] = _Route(body, drip=0.02)  # ~50 bytes/s: every read answers, none times out
    _register(server, registry, "/drip.pth", body, size=len(body))
    with pytest.raises(WeightsError, match="too slow"):  # the server would drip for 3 s, then stop early
        W.fetch("test-sam", min_rate=5_000, rate_grace=0.5)
    with pytest.raises(WeightsError, match="took longer than"):
        W.fetch("test-sam", deadline=0.5, min_rate=0, rate_grace=0)
    assert _cache_files() == []


def test_corrupt_torchscript_archive_never_enters_the_cache(tmp_path, registry, server):
    """A zip that is not TorchScript passed the old zip-only check and was cached."""
    bad = tmp_path / "ts.pt"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("archive/data.pkl", b"not a pickle")
    ckpt = W.Checkpoint(name="ts-bad", family="clip", arch="x", url=server.base + "/ts.pt",
                        sha256=W.sha256_file(bad), filename="ts-bad.pt", format="torchscript")
    W.register(ckpt)
    with pytest.raises(WeightsError, match="not a readable TorchScript checkpoint"):
        W.import_file("ts-bad", bad)
    server.routes["/ts.pt"] = _Route(bad.read_bytes())
    with pytest.raises(WeightsError, match="not a readable TorchScript checkpoint"):
        W.ensure("ts-bad")
    assert _cache_files() == []
