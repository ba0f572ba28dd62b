"""Tokens, trust and hostile input (issue 21, items 5 and 7-13): a token goes only to its host, the weight cache
trusts only what it verified, terminal output carries no injected sequences, a received output folder cannot pull
local files into a report, special files never hang a verb, moved or edited images keep the region index right, and
odd input gets one clear line. Every test here failed on the code before the fix."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from clipsam import weights as W
from clipsam.cli import app
from clipsam.core.taxonomy import load_taxonomy
from clipsam.errors import ChecksumError, TaxonomyError, WeightsError

TINY = ["--sam", "tiny-random", "--clip", "tiny-random"]


# -- 5. a token goes only to the host it is for -----------------------------------------------------------------
def _serve(host: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("other_host", [True, False])
def test_hf_token_is_not_forwarded_to_another_host(monkeypatch, registry, other_host):
    """A 302 from the model host to another host (127.0.0.2) must not carry the token; one to a path of the same
    host does."""
    body = b"weights" * 100
    seen: dict[str, str | None] = {}
    target: dict[str, str] = {}

    class Host(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen[f"{self.server.server_address[0]}{self.path}"] = self.headers.get("Authorization")
            if self.path == "/resolve":
                self.send_response(302)
                self.send_header("Location", target["url"])
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    hub = _serve("127.0.0.1", Host)
    files = _serve("127.0.0.2", Host) if other_host else hub
    target["url"] = f"http://{files.server_address[0]}:{files.server_address[1]}/file"
    ckpt = W.Checkpoint(name="gated", family="sam", arch="sam3",
                        url=f"http://127.0.0.1:{hub.server_address[1]}/resolve",
                        sha256=hashlib.sha256(body).hexdigest(), filename="gated.bin", size=len(body),
                        extra={"hf_repo": "someone/gated"})
    W.register(ckpt, replace=True)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setattr(W, "_check_loadable", lambda *a, **k: None)  # the bytes are not a model; the hash is checked
    try:
        W.fetch("gated")
    finally:
        for srv in {hub, files}:
            srv.shutdown()
    assert seen["127.0.0.1/resolve"] == "Bearer hf_secret"
    assert seen[f"{files.server_address[0]}/file"] == (None if other_host else "Bearer hf_secret")


# -- 8. what the weight cache trusts --------------------------------------------------------------------------
def _cached(registry, body: bytes, sha: str | None = None) -> Path:
    ckpt = W.Checkpoint(name="t", family="sam", arch="vit_b", url="http://127.0.0.1:9/none",
                        sha256=hashlib.sha256(body).hexdigest() if sha is None else sha, filename="t.pth")
    W.register(ckpt, replace=True)
    path = W.cache_dir() / "t.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def test_a_same_size_swap_with_its_mtime_restored_is_caught(registry):
    path = _cached(registry, b"A" * 4096)
    assert W.ensure("t", download=False) == path  # verified once: stamped
    st = path.stat()
    path.write_bytes(b"B" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ChecksumError):
        W.ensure("t", download=False)


def test_a_forged_stamp_is_not_trusted(registry):
    path = _cached(registry, b"A" * 4096)
    good = hashlib.sha256(b"A" * 4096).hexdigest()
    path.write_bytes(b"B" * 4096)  # a swapped file, never verified, with a stamp written by someone else
    st = path.stat()
    fields = {"sha256": good, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
              "inode": st.st_ino, "device": st.st_dev}
    for stamp in (fields, {**fields, "signature": "0" * 64}):
        (path.parent / "t.pth.verified.json").write_text(json.dumps(stamp))
        with pytest.raises(ChecksumError):
            W.ensure("t", download=False)


def test_a_corrupt_pin_file_is_an_error_not_a_reset(registry):
    _cached(registry, b"C" * 1024, sha="")
    pins = W.cache_dir() / "pins.json"
    pins.write_text("{not json")
    with pytest.raises(WeightsError, match="pins.json"):
        W.ensure("t", download=False)
    assert pins.read_text() == "{not json"
    pins.write_text(json.dumps({"t": "short"}))
    with pytest.raises(WeightsError, match="pins.json"):
        W.expected_sha256(W.get("t"))


# -- 7. terminal injection ------------------------------------------------------------------------------------
def test_taxonomy_names_are_shown_not_interpreted(tmp_path):
    tax = tmp_path / "evil.yaml"
    tax.write_text('name: evil\nnodes:\n  - name: "[link=mailto:me@attacker.example]click"\n'
                   '    prompts: ["\\e]8;;http://x\\e\\\\x", "[bold]b[/bold]", "[/x]"]\n  - name: "\\e[31mred"\n')
    link = "[link=mailto:me@attacker.example]click"
    for args in (["taxonomy", "show", str(tax)], ["taxonomy", "path", link, "-t", str(tax)],
                 ["taxonomy", "search", "link", "-t", str(tax)], ["taxonomy", "validate", str(tax)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
        assert "\x1b" not in res.output and "unexpected" not in res.output
    res = CliRunner().invoke(app, ["taxonomy", "show", str(tax)])
    assert "[link=mailto:me@attacker.example]click" in res.output and "[/x]" in res.output
    (tmp_path / "t[").mkdir()
    odd = tmp_path / "t[" / "x].yaml"  # a path that reads as a closing tag
    odd.write_text("nodes: [dog]\n")
    red = "\\x1b[31mred" in res.output
    res = CliRunner().invoke(app, ["taxonomy", "validate", str(odd)])
    assert res.exit_code == 0 and str(odd) in res.output.replace("\n", ""), res.output
    assert red


@pytest.mark.parametrize("name", ["evil\x1b]0;pwned\x07.png", "two\nlines.png", "a[/x].png", "b[red]c.png"])
def test_file_names_reach_the_terminal_escaped(tmp_path, name):
    for args in (["segment", str(tmp_path / name), "cat", *TINY], ["report", str(tmp_path / name)],
                 ["label", str(tmp_path / name), "-t", "everyday", "--out", str(tmp_path / "o"), *TINY]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "\x1b" not in res.output and "\x07" not in res.output and "unexpected" not in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    res = CliRunner().invoke(app, ["segment", str(tmp_path / name), "cat", *TINY])
    assert (name.replace("\x1b", "\\x1b").replace("\x07", "\\x07").replace("\n", "\\n")) in res.output


# -- 9. a received output folder cannot pull local files into a report ------------------------------------------
def test_report_embeds_only_images_under_the_image_root(tmp_path, scene):
    from clipsam.testing import oracle_label_run

    work = tmp_path / "received"
    photos = work / "photos"
    photos.mkdir(parents=True)
    Image.fromarray(scene.image).save(photos / "scene.png")
    oracle_label_run(photos, work / "labels", scene)
    secret = tmp_path / "home" / "private.png"
    secret.parent.mkdir()
    Image.fromarray(scene.image).save(secret)
    (photos / "scene.png").unlink()
    for part in (work / "labels" / "parts").glob("*.json"):  # the sender points the run at a file of yours
        data = json.loads(part.read_text())
        data["source"]["path"] = str(secret)
        part.write_text(json.dumps(data))

    def thumbnails(*extra):
        res = CliRunner().invoke(app, ["report", str(work / "labels"), "--json", *extra])
        assert res.exit_code == 0, res.output
        page = (work / "labels" / "report.html").read_text()
        return page.count('src="data:image/'), json.loads(res.output)

    shown, summary = thumbnails()
    assert shown == 0 and summary["outside_root"] == 1
    assert thumbnails("--image-root", str(tmp_path))[0] == 1  # the user names the folder: theirs to embed
    assert thumbnails("--allow-outside-root")[0] == 1
    res = CliRunner().invoke(app, ["report", str(work / "labels"), "--image-root", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "--image-root" in res.output and "no such folder" in res.output
    link = photos / "scene.png"
    link.symlink_to(secret)  # a link inside the root that leads out of it
    assert thumbnails()[0] == 0


@pytest.mark.parametrize("coco", [
    {"images": [{"id": 1}], "annotations": [], "categories": []},
    {"images": [{"id": 1, "file_name": "a.png", "height": 2, "width": 2}], "annotations": [{"image_id": 1, "id": 1}],
     "categories": []},
    {"images": [], "annotations": [], "categories": ["dog"]},
    {"images": "x", "annotations": [], "categories": []},
    [1, 2],
])
def test_report_of_malformed_files_is_one_clear_line(tmp_path, coco):
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a COCO file clipsam can read" in res.output, res.output
    assert "unexpected" not in res.output and "Traceback" not in res.output


# -- 10. special files never hang a verb ----------------------------------------------------------------------
def _finishes(fn, seconds: float = 120.0):
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(result=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hung on a special file"
    return box.get("result")


def test_index_and_other_verbs_skip_fifos_and_devices(tmp_path, scene):
    pytest.importorskip("lancedb")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    Image.fromarray(scene.image).save(tmp_path / "ok.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{fifo}\n/dev/zero\nok.png\n")
    res = _finishes(lambda: CliRunner().invoke(app, ["index", str(listing), "--db", str(tmp_path / "db"), *TINY,
                                                     "--points-per-side", "4", "--json"]))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["added"] == 1 and summary["failed"] == 2
    assert all("pipe" in e["reason"] or "device" in e["reason"] for e in summary["errors"])
    for args in (["taxonomy", "validate", str(fifo)], ["eval", str(fifo), str(fifo)],
                 ["weights", "import", "vit_b", "/dev/zero"], ["segment", str(fifo), "cat", *TINY]):
        res = _finishes(lambda a=args: CliRunner().invoke(app, a))
        assert res.exit_code != 0 and "unexpected" not in res.output, (args, res.output)


# -- 11. moved and edited images in the region index ---------------------------------------------------------
def test_index_follows_moved_images_and_replaces_edited_ones(tmp_path, scene, tiny):
    pytest.importorskip("lancedb")
    from clipsam.search import RegionIndex

    old = tmp_path / "old"
    old.mkdir()
    Image.fromarray(scene.image).save(old / "a.png")
    store = RegionIndex(tmp_path / "db", tiny, taxonomy=None)
    first = store.add(old)
    rows = len(store)
    assert first["added"] == 1 and rows > 0
    new = tmp_path / "new"
    old.rename(new)
    moved = store.add(new)
    assert moved["moved"] == 1 and len(store) == rows
    hits = store.search(Path(new / "a.png"), k=rows)
    assert {h.image_path for h in hits} == {str(new / "a.png")} and {h.file_status() for h in hits} == {"ok"}
    Image.fromarray(scene.image[:80, :150]).save(new / "a.png")  # edited: smaller, other content
    edited = store.add(new)
    assert edited["added"] == 1
    hits = store.search(Path(new / "a.png"), k=len(store) + 5)
    assert store.image_count() == 1 and len(hits) == len(store)
    assert {tuple(h.rle["size"]) for h in hits} == {(80, 150)}  # no rows of the old content left
    res = CliRunner().invoke(app, ["search", "--db", str(tmp_path / "db"), "--like", str(new / "a.png"),
                                   "--save-crops", str(tmp_path / "crops")])
    assert res.exit_code == 0, res.output
    Image.fromarray(scene.image[::-1]).save(new / "a.png")  # changed again, not re-indexed
    res = CliRunner().invoke(app, ["search", "--db", str(tmp_path / "db"), "--like", str(new / "a.png"),
                                   "--save-crops", str(tmp_path / "crops2"), "--json"])
    assert res.exit_code == 0, res.output
    assert {h["file"] for h in json.loads(res.output)} == {"changed"}
    (new / "a.png").unlink()
    res = CliRunner().invoke(app, ["search", "--db", str(tmp_path / "db"), "--like", str(old.parent / "x.png"),
                                   "--json"])
    assert res.exit_code == 2  # the example itself is gone: one line
    res = CliRunner().invoke(app, ["search", "what", "--db", str(tmp_path / "db"), "--save-crops",
                                   str(tmp_path / "crops3")])
    assert res.exit_code == 0 and "moved, deleted or edited since indexing" in res.output, res.output


def test_a_database_whose_first_image_had_no_region_stays_usable(tmp_path, scene, tiny):
    """Issue 24's bug 1, met here: the embedding size must not be recorded as 0 by an image without regions."""
    pytest.importorskip("lancedb")
    from clipsam.search import RegionIndex
    from clipsam.testing import tiny_segmenter

    Image.fromarray(scene.image).save(tmp_path / "a.png")
    strict = tiny_segmenter(generator_params={"pred_iou_thresh": 1.0, "stability_score_thresh": 1.0})
    empty = RegionIndex(tmp_path / "db", strict, taxonomy=None).add([tmp_path / "a.png"])
    assert empty["added"] == 1 and empty["regions"] == 0
    Image.fromarray(scene.image[::-1]).save(tmp_path / "b.png")
    store = RegionIndex(tmp_path / "db", tiny, taxonomy=None)
    counts = store.add([tmp_path / "b.png"])
    assert counts["added"] == 1 and counts["regions"] > 0 and len(store) == counts["regions"]
    assert store.search("anything", k=1)


# -- 12. a label named unknown ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["unknown", "Unknown", "unknown part"])
def test_unknown_is_a_reserved_label_name(tmp_path, name):
    tax = tmp_path / "t.yaml"
    tax.write_text(f"nodes:\n  - name: thing\n    children: [\"{name}\"]\n")
    with pytest.raises(TaxonomyError, match="reserved"):
        load_taxonomy(tax)


# -- 13. one clear line instead of "unexpected …", and checks before any model runs -------------------------------
@pytest.mark.parametrize("images,pattern", [
    ([{"id": 1, "file_name": "a\u0000b.png"}], "NUL byte"),
    ([{"id": 10**300, "file_name": "a.png"}], "must fit 64 bits"),
])
def test_odd_coco_sources_are_one_line(tmp_path, images, pattern):
    src = tmp_path / "src.json"
    src.write_text(json.dumps({"images": images}))
    res = CliRunner().invoke(app, ["label", str(src), "-t", "everyday", "--out", str(tmp_path / "o"), *TINY])
    assert res.exit_code == 2 and pattern in res.output and "unexpected" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_search_box_must_be_finite(tmp_path, scene):
    Image.fromarray(scene.image).save(tmp_path / "q.png")
    (tmp_path / "db").mkdir()
    res = CliRunner().invoke(app, ["search", "--db", str(tmp_path / "db"), "--like", str(tmp_path / "q.png"),
                                   "--box", "nan,0,10,10"])
    assert res.exit_code == 2 and "expected x0,y0,x1,y1" in res.output and "unexpected" not in res.output


def _offline_default_models_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "CLIPSAM_HOME": str(tmp_path / "home"), "CLIPSAM_OFFLINE": "1"}


@pytest.mark.slow
def test_a_slash_in_a_free_text_query_fails_before_any_model(tmp_path, scene):
    """With the default models and no weights, the query is refused, not the missing weights reported."""
    Image.fromarray(scene.image).save(tmp_path / "in.png")
    res = subprocess.run([sys.executable, "-m", "clipsam", "segment", str(tmp_path / "in.png"), "a/b"],
                         capture_output=True, text=True, env=_offline_default_models_env(tmp_path), timeout=300)
    assert res.returncode == 2 and "'/' separates label paths" in res.stderr, res.stderr
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.pth"))


@pytest.fixture()
def read_only_folder(tmp_path):
    """A real read-only file system (a tmpfs mounted ro; needs root and mount rights, skipped elsewhere)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_segment_out_on_a_read_only_disk_fails_before_any_model(tmp_path, scene, read_only_folder):
    Image.fromarray(scene.image).save(tmp_path / "in.png")
    res = subprocess.run([sys.executable, "-m", "clipsam", "segment", str(tmp_path / "in.png"), "cat", "--out",
                          str(read_only_folder / "o.png")],
                         capture_output=True, text=True, env=_offline_default_models_env(tmp_path), timeout=300)
    assert res.returncode == 2 and "cannot write into" in res.stderr and "weights" not in res.stderr, res.stderr


_URLS = st.builds(lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
                  st.sampled_from(["http", "https", "HTTPS"]),
                  st.sampled_from(["huggingface.co", "HuggingFace.co", "cdn-lfs.hf.co", "127.0.0.1", "evil.example"]),
                  st.sampled_from(["", ":443", ":80", ":8080"]), st.sampled_from(["a", "b/c?x=1"]))


@settings(max_examples=200, deadline=None)
@given(start=_URLS, hops=st.lists(_URLS, min_size=1, max_size=4))
def test_credentials_follow_a_redirect_chain_only_while_the_origin_stays(start, hops):
    """Over generated chains of redirects: the token survives a hop exactly when scheme, host and port (defaults
    filled in, case ignored) stay those of the previous URL, and once dropped it never comes back."""
    import urllib.request

    handler = W._CredentialSafeRedirects()
    req = urllib.request.Request(start, headers={"Authorization": "Bearer t", "User-Agent": "clipsam"})
    has_token = True
    for url in hops:
        new = handler.redirect_request(req, None, 302, "Found", {}, url)
        same = W._origin(url) == W._origin(req.full_url)
        has_token = has_token and same
        assert ("Authorization" in new.headers) == has_token, (req.full_url, url)
        assert new.headers.get("User-agent") == "clipsam"
        req = new
