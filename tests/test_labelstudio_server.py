"""Against the real thing: a Label Studio server on 127.0.0.1 (SQLite, a temporary data directory) with a project
made from ``clipsam labelstudio config``, connected to clipsam's server as its ML backend through Label Studio's own
SDK; Label Studio asks for predictions and an interactive click, and what it stored is read back and decoded with
its own RLE decoder. A second project imports ``clipsam label --format label-studio``'s task file.

Label Studio lives in its own environment (it pins Django, numpy and more): ``.ci/run`` makes ``.venv-labelstudio``;
elsewhere set ``CLIPSAM_LABEL_STUDIO_PYTHON`` to its Python. Without one these tests skip, unless
``CLIPSAM_REQUIRE_LABEL_STUDIO=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsam.core import masks as M
from clipsam.labelstudio import PART_OF, label_config
from clipsam.testing.oracle import oracle_segmenter, synthetic_scene

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).parent / "labelstudio" / "driver.py"
SCENE = synthetic_scene()


def _label_studio_python() -> Path | None:
    given = os.environ.get("CLIPSAM_LABEL_STUDIO_PYTHON")
    path = Path(given) if given else ROOT / ".venv-labelstudio" / "bin" / "python"
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    python = _label_studio_python()
    if python is None:
        if os.environ.get("CLIPSAM_REQUIRE_LABEL_STUDIO") == "1":
            pytest.fail("CLIPSAM_REQUIRE_LABEL_STUDIO=1 and no Label Studio environment (.venv-labelstudio)")
        pytest.skip("no Label Studio environment: make .venv-labelstudio as .ci/run does")
    data, port, token = tmp_path_factory.mktemp("label-studio"), _free_port(), secrets.token_hex(20)
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data), LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
               # clipsam runs on this machine: Label Studio must be allowed to call a loopback ML backend
               ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="")
    log = open(data / "label-studio.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen([str(python.parent / "label-studio"), "start", "--no-browser", "--port", str(port),
                             "--host", url, "--username", "ci@clipsam.test", "--password", secrets.token_hex(8),
                             "--user-token", token], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    try:
        _wait(url + "/health", 240, proc)
        yield {"url": url, "token": token, "python": str(python), "log": data / "label-studio.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def clipsam_backend():
    import uvicorn

    from clipsam.serve import Service, create_app

    seg = oracle_segmenter(SCENE)
    service = Service(seg)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(f"http://127.0.0.1:{port}/health", 30)
    yield {"url": f"http://127.0.0.1:{port}", "seg": seg, "service": service}
    server.should_exit = True
    thread.join(30)
    service.close()


def drive(label_studio, job: dict, tmp_path: Path) -> dict:
    job = {**job, "label_studio": label_studio["url"], "token": label_studio["token"]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([label_studio["python"], str(DRIVER), str(tmp_path / "job.json"), str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode:
        tail = Path(label_studio["log"]).read_text(errors="replace")[-3000:]
        pytest.fail(f"the Label Studio driver failed:\n{proc.stderr[-3000:]}\nLabel Studio's log:\n{tail}")
    return json.loads((tmp_path / "out.json").read_text())


def expected_of(seg) -> list[tuple]:
    """``(result id, mask, label, label path, parent result id, kind)`` per region of a segmentation."""
    return [(f"cs{r.id}", r.mask(), r.label, r.label_path_str, None if r.parent_id is None else f"cs{r.parent_id}",
             r.kind) for r in seg.regions]


def expected_of_coco(coco: dict) -> list[tuple]:
    """The same from a label run's COCO (result ids are annotation ids: ``cs<annotation id>``)."""
    return [(f"cs{a['id']}", M.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"]}),
             a["label_path"].split("/")[-1] if a["label_path"] else a["kind"], a["label_path"],
             None if a["parent_id"] is None else f"cs{a['parent_id']}", a["kind"]) for a in coco["annotations"]]


def check_prediction(pred: dict, expected: list[tuple]) -> None:
    """What Label Studio stored is clipsam's: every mask (decoded by Label Studio), label, path and part link."""
    assert pred["errors"] == []  # Label Studio's LabelInterface finds the results valid for the project's config
    shapes = {r["id"]: r for r in pred["result"] if r["type"] == "brushlabels"}
    paths = {r["id"]: r["value"]["text"][0] for r in pred["result"] if r["type"] == "textarea"}
    links = {(r["from_id"], r["to_id"]): r.get("labels") for r in pred["result"] if r["type"] == "relation"}
    assert sorted(shapes) == sorted(e[0] for e in expected)
    for rid, mask, label, path, _, _ in expected:
        assert pred["masks"][rid] == np.flatnonzero(mask.ravel()).tolist(), label
        assert shapes[rid]["value"]["brushlabels"] == [label]
        assert (shapes[rid]["original_height"], shapes[rid]["original_width"]) == mask.shape
        assert paths.get(rid) == (path or None)
    parts = {(rid, parent) for rid, _, _, _, parent, kind in expected if kind == "part"}
    assert len(parts) == 4 and set(links) == parts  # dog head -> dog, ear -> head, two wheels -> car
    assert all(labels == [PART_OF] for labels in links.values())


def test_a_project_connected_to_clipsam_gets_hierarchical_pre_annotations_and_interactive_masks(
        label_studio, clipsam_backend, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(SCENE.image).save(image)
    h, w = SCENE.image.shape[:2]
    click = {"original_width": w, "original_height": h, "image_rotation": 0, "id": "k1", "from_name": "click",
             "to_name": "image", "type": "keypointlabels", "origin": "manual", "is_positive": True,
             "value": {"x": 48 * 100 / w, "y": 74 * 100 / h, "width": 0.5, "keypointlabels": ["cat"]}}
    out = drive(label_studio, {"job": "backend", "backend": clipsam_backend["url"], "images": [str(image)],
                               "config": label_config(SCENE.taxonomy), "context": {"result": [click]}}, tmp_path)
    seg = clipsam_backend["seg"]
    (task,) = out["tasks"]
    assert task["data"]["image"].startswith("/data/upload/")  # clipsam fetched it from Label Studio, with its token
    (pred,) = task["predictions"]
    assert pred["model_version"] == clipsam_backend["service"].model_version
    check_prediction(pred, expected_of(seg.segment_everything(SCENE.image)))
    assert out["interactive_status"] == 200 and out["interactive"]["errors_vs_config"] == []
    (shape,) = out["interactive"]["data"]["result"]
    assert shape["value"]["brushlabels"] == ["cat"]
    mask = seg.segment_prompt(SCENE.image, points=[[48, 74]]).regions[0].mask()
    assert out["interactive"]["masks"][shape["id"]] == np.flatnonzero(mask.ravel()).tolist()
    cache = clipsam_backend["service"].health()["embedding_cache"]
    assert cache["hits"] >= 1  # the click reused the embedding the pre-annotation computed


def test_the_label_run_task_file_imports_with_its_predictions(label_studio, tmp_path):
    from clipsam.testing import oracle_label_run

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(SCENE.image).save(photos / "scene.png")
    coco = oracle_label_run(photos, tmp_path / "out", SCENE, formats=("label-studio",))
    config = (tmp_path / "out" / "label-studio-config.xml").read_text()
    out = drive(label_studio, {"job": "import", "config": config,
                               "tasks_file": str(tmp_path / "out" / "label-studio.json")}, tmp_path)
    (task,) = out["tasks"]
    assert task["data"]["image"] == "/data/local-files/?d=scene.png"
    (pred,) = task["predictions"]
    check_prediction(pred, expected_of_coco(coco))
    assert len(coco["annotations"]) == len(oracle_segmenter(SCENE).segment_everything(SCENE.image).regions)


def test_clipsam_serve_answers_then_stops_after_the_request_in_flight(tmp_path):
    """The CLI server on the tiny models: health, a query, and SIGTERM while a request runs: it is answered."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clipsam", "serve", "--sam", "tiny-random", "--clip", "tiny-random",
                             "--taxonomy", "everyday", "--port", str(port), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/health", 120, proc)
        big = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8)).save(big)
        answer: dict = {}

        def request() -> None:
            boundary = "clipsamboundary"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
                    "Content-Type: image/png\r\n\r\n").encode() + big.read_bytes() + \
                f"\r\n--{boundary}--\r\n".encode()
            req = urllib.request.Request(url + "/v1/everything", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            with urllib.request.urlopen(req, timeout=120) as r:
                answer.update(status=r.status, body=json.loads(r.read()))

        thread = threading.Thread(target=request)
        thread.start()
        for _ in range(200):  # wait until the request is running, then ask the server to stop
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if json.loads(r.read())["requests"]["running"]:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        thread.join(120)
        assert answer.get("status") == 200 and answer["body"]["image_size"] == [1200, 1600]
        # uvicorn finishes the requests in flight, then ends by the signal it was sent (or 0)
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in proc.stderr.read()
    ready = json.loads(proc.stdout.read())
    assert ready["url"] == url and ready["docs"] == url + "/docs"


def test_clipsam_serve_on_ray_serve_with_two_replicas(tmp_path):
    """``clipsam serve --ray --replicas 2`` on CPU: both replicas answer, each with the same JSON a lone segmenter
    gives, and Ctrl-C stops Ray."""
    pytest.importorskip("ray.serve")
    from clipsam.testing import tiny_segmenter

    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "clipsam", "serve", "--ray", "--replicas", "2", "--sam",
                             "tiny-random", "--clip", "tiny-random", "--port", str(port), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    image = tmp_path / "scene.png"
    Image.fromarray(SCENE.image).save(image)
    try:
        _wait(url + "/health", 300, proc)
        pids, deadline = set(), time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:  # the proxy may learn of the second replica late
            with urllib.request.urlopen(url + "/health", timeout=30) as r:
                pids.add(json.loads(r.read())["pid"])
            time.sleep(0.0 if len(pids) == 2 else 0.25)
        assert len(pids) == 2  # two replicas, two processes
        boundary = "clipsamboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"query\"\r\n\r\ncat\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"scene.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(url + "/v1/query", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        expected = json.loads(tiny_segmenter().segment(SCENE.image, "cat").to_json())
        assert answer == expected
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0  # Ctrl-C stops the application and Ray, no error
    assert "Traceback" not in proc.stderr.read()


VALIDATE = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
job = json.load(sys.stdin)
li = LabelInterface(job["config"])
tree = next(t for t in li.controls if t.tag.lower() == "taxonomy")
print(json.dumps({"errors": li.validate_prediction({"result": job["result"]}, return_errors=True),
                  "per_region": str(tree.attr.get("perRegion")), "taxonomy": tree.name}))
"""


def test_label_studio_accepts_the_taxonomy_config_and_its_per_region_paths():
    """Label Studio's own LabelInterface reads `labelstudio config --path taxonomy` and finds the prediction with a
    taxonomy choice per region valid (no server needed: the SDK of the Label Studio environment)."""
    python = _label_studio_python()
    if python is None:
        if os.environ.get("CLIPSAM_REQUIRE_LABEL_STUDIO") == "1":
            pytest.fail("CLIPSAM_REQUIRE_LABEL_STUDIO=1 and no Label Studio environment (.venv-labelstudio)")
        pytest.skip("no Label Studio environment: make .venv-labelstudio as .ci/run does")
    from clipsam.labelstudio import LabelConfig, label_config, prediction
    from clipsam.testing import oracle_segmenter

    config = label_config(SCENE.taxonomy, path="taxonomy")
    seg = oracle_segmenter(SCENE).segment_everything(SCENE.image)
    result = prediction(seg, LabelConfig.parse(config), "clipsam-test")["result"]
    assert sum(r["type"] == "taxonomy" for r in result) == sum(bool(r.label_path) for r in seg.regions) > 0
    done = subprocess.run([str(python), "-c", VALIDATE], input=json.dumps({"config": config, "result": result}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"errors": [], "per_region": "true", "taxonomy": "label_path"}
