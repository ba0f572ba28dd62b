"""``clipsam serve``'s app in-process (FastAPI's test client): the same JSON as the library, limits, keys, the busy
queue, timeouts, concurrent clients, the embedding cache, and Label Studio's protocol against a loopback image
host that records who got a credential."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from clipsam.core import lsrle
from clipsam.labelstudio import label_config
from clipsam.testing.oracle import oracle_segmenter, synthetic_scene

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from clipsam.serve import Limits, Service, create_app  # noqa: E402
from clipsam.serve.service import Busy, TimedOut  # noqa: E402

SCENE = synthetic_scene()
CAT_CLICK = [[48, 74]]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def served():
    seg = oracle_segmenter(SCENE)
    service = Service(seg, Limits(max_request_bytes=300_000, max_pixels=50_000, workers=2, queue=8, timeout_s=30))
    yield seg, service, TestClient(create_app(service))
    service.close()


def upload(image: np.ndarray | None = None, name: str = "scene.png") -> dict:
    return {"image": (name, png(SCENE.image if image is None else image), "image/png")}


def one_line_error(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"]
    return body["error"]


def test_endpoints_answer_what_the_library_returns(served):
    seg, _, client = served
    r = client.post("/v1/query", files=upload(), data={"query": "cat, dog"})
    assert r.status_code == 200 and r.json() == json.loads(seg.segment(SCENE.image, "cat, dog").to_json())
    r = client.post("/v1/everything", files=upload())
    assert r.json() == json.loads(seg.segment_everything(SCENE.image).to_json())
    assert {x["label"] for x in r.json()["regions"]} >= {"dog", "head", "ear", "cat", "sofa", "unknown"}
    r = client.post("/v1/prompt", files=upload(), data={"points": json.dumps(CAT_CLICK), "labels": "[1]"})
    direct = seg.segment_prompt(SCENE.image, points=CAT_CLICK, labels=[1])
    assert {k: v for k, v in r.json().items() if k != "logits_id"} == json.loads(direct.to_json())
    refine = {"points": "[[48, 74], [20, 20]]", "labels": "[1, 0]", "mask_from": r.json()["logits_id"] + ":0"}
    again = client.post("/v1/prompt", files=upload(), data=refine).json()
    expected = seg.segment_prompt(SCENE.image, points=[[48, 74], [20, 20]], labels=[1, 0],
                                  mask=direct.low_res_logits[0])
    assert {k: v for k, v in again.items() if k != "logits_id"} == json.loads(expected.to_json())
    r = client.post("/v1/prompt", files=upload(), data={"box": "[8, 60, 90, 115]"})
    assert r.status_code == 200 and len(r.json()["regions"]) >= 1


@pytest.mark.parametrize("files, data, status, message", [
    ({"image": ("x.png", b"not an image", "image/png")}, {"query": "cat"}, 400, "x.png: not an image"),
    ({"image": ("e.png", b"", "image/png")}, {"query": "cat"}, 400, "e.png: the image is empty"),
    (None, {}, 422, "query: Field required"),
    (None, {"query": " , "}, 400, "the text query is empty"),
    (None, {"query": "cat", "strategy": "psychic"}, 400, "strategy must be one of"),
])
def test_bad_requests_get_a_4xx_and_one_line(served, files, data, status, message):
    _, _, client = served
    r = client.post("/v1/query", files=files or upload(), data=data)
    assert r.status_code == status and message in one_line_error(r)


@pytest.mark.parametrize("data, message", [
    ({"points": "[[48"}, "points must be JSON"),
    ({"points": "[[48, 74]]", "labels": "[1, 0]"}, "labels"),
    ({"box": "[1, 2, 3]"}, "box"),
    ({}, "point"),
    ({"points": "[[48, 74]]", "mask_from": "nosuchid:0"}, "no such logits id"),
])
def test_bad_prompts_get_a_400(served, data, message):
    _, _, client = served
    r = client.post("/v1/prompt", files=upload(), data=data)
    assert r.status_code == 400 and message in one_line_error(r)


def test_oversize_bodies_and_images_get_413_before_any_model_runs(served):
    _, service, client = served
    r = client.post("/v1/query", files={"image": ("big.png", b"\0" * 400_000, "image/png")}, data={"query": "cat"})
    assert r.status_code == 413 and "larger than this server's limit of 300000 bytes" in one_line_error(r)
    wide = np.zeros((100, 600, 3), np.uint8)  # 60,000 pixels > 50,000, a small file
    r = client.post("/v1/query", files=upload(wide, "wide.png"), data={"query": "cat"})
    assert r.status_code == 413 and "wide.png: the image is 600x100 = 60000 pixels" in one_line_error(r)
    assert service.health()["requests"]["requests"] == 0


def test_an_api_key_guards_everything_but_health_and_docs():
    service = Service(oracle_segmenter(SCENE))
    client = TestClient(create_app(service, api_key="s3cret"))
    assert client.get("/health").status_code == 200 and client.get("/docs").status_code == 200
    r = client.post("/v1/query", files=upload(), data={"query": "cat"})
    assert r.status_code == 401 and "API key" in one_line_error(r)
    wrong = client.post("/v1/query", files=upload(), data={"query": "cat"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = "Basic " + base64.b64encode(b"labelstudio:s3cret").decode()
    for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}, {"Authorization": basic}):
        assert client.post("/v1/query", files=upload(), data={"query": "cat"}, headers=headers).status_code == 200
    assert client.post("/predict", json={}).status_code == 401
    service.close()


def test_a_full_queue_answers_busy_and_a_slow_call_times_out():
    service = Service(oracle_segmenter(SCENE), Limits(workers=1, queue=0, timeout_s=0.2))
    release = threading.Event()

    async def scenario():
        first = asyncio.ensure_future(service.run(release.wait, 10))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match="1 worker"):
            await service.run(lambda: None)
        with pytest.raises(TimedOut, match="0.2 s"):
            await first
        with pytest.raises(Busy):  # the timed-out call still runs and holds its slot: the bound stays true
            await service.run(lambda: None)
        release.set()
        for _ in range(100):
            if service.health()["requests"]["running"] == 0:
                break
            await asyncio.sleep(0.01)
        return await service.run(lambda: "after")

    assert asyncio.run(scenario()) == "after"
    counts = service.health()["requests"]
    assert counts["busy"] == 2 and counts["timed_out"] == 1 and counts["done"] == 2
    service.close()


def test_busy_and_timeout_reach_the_client_as_503_and_504():
    seg = oracle_segmenter(SCENE)
    gate = threading.Event()
    slow = seg.segment_everything
    seg.segment_everything = lambda *a, **k: (gate.wait(5), slow(*a, **k))[1]  # type: ignore[method-assign]
    service = Service(seg, Limits(workers=1, queue=0, timeout_s=0.5))
    client = TestClient(create_app(service))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/everything", files=upload())
        time.sleep(0.2)
        r = client.post("/v1/everything", files=upload())
        assert r.status_code == 503 and "busy" in one_line_error(r)
        assert first.result().status_code == 504
    gate.set()
    service.close()


def test_concurrent_clients_get_what_they_would_get_alone(served):
    seg, service, client = served
    shifted = np.roll(SCENE.image, 7, axis=1)
    flipped = SCENE.image[:, ::-1].copy()
    jobs = []
    for image in (SCENE.image, shifted, flipped):
        jobs.append((image, "query", {"query": "cat"}))
        jobs.append((image, "prompt", {"points": json.dumps(CAT_CLICK)}))
        jobs.append((image, "everything", {}))
    def ask(job: tuple) -> dict:
        image, kind, data = job
        answer = client.post(f"/v1/{kind}", files=upload(image), data=data).json()
        answer.pop("logits_id", None)  # a fresh id per answer
        return answer

    alone = [ask(job) for job in jobs]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(ask, jobs * 3))
    assert together == alone * 3
    assert service.health()["requests"]["failed"] == 0


def test_a_second_click_on_the_same_image_reuses_its_embedding(served):
    _, service, client = served
    before = service.health()["embedding_cache"]
    client.post("/v1/prompt", files=upload(), data={"points": json.dumps(CAT_CLICK)})
    client.post("/v1/prompt", files=upload(), data={"points": "[[40, 30]]"})
    after = service.health()["embedding_cache"]
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 1


def test_the_embedding_is_computed_once_when_clients_ask_at_once():
    from clipsam.stages.prepare import EmbeddingCache, Work

    calls = []

    class Slow:
        def embed(self, pixels):
            calls.append(1)
            time.sleep(0.2)
            return "emb"

    cache = EmbeddingCache(2)
    work = Work(original_size=(4, 4), pixels=np.zeros((4, 4, 3), np.uint8), key="k", path=None,
                image=np.zeros((4, 4, 3), np.uint8))
    proposer = Slow()
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: cache.get(work, proposer), range(4))) == ["emb"] * 4
    assert len(calls) == 1 and (cache.hits, cache.misses) == (3, 1)


def test_encoding_one_image_does_not_hold_up_another():
    from clipsam.stages.prepare import EmbeddingCache, Work

    gate = threading.Event()

    class Gated:
        def embed(self, pixels):
            if pixels[0, 0, 0] == 1:
                assert gate.wait(10)
            return int(pixels[0, 0, 0])

    def work(value: int) -> Work:
        px = np.full((4, 4, 3), value, np.uint8)
        return Work(original_size=(4, 4), pixels=px, key=str(value), path=None, image=px)

    cache, proposer = EmbeddingCache(4), Gated()
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(cache.get, work(1), proposer)
        time.sleep(0.05)
        other = pool.submit(cache.get, work(2), proposer)
        assert other.result(timeout=5) == 2 and not slow.done()  # image 2 did not wait for image 1
        gate.set()
        assert slow.result(timeout=5) == 1


# -- Label Studio's protocol -----------------------------------------------------------------------------------------
class ImageHost:
    """A loopback HTTP server that serves the scene as PNG and records each request's path and Authorization."""

    def __init__(self, redirect_to: str | None = None) -> None:
        seen = self.seen = []
        body = png(SCENE.image)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/moved") and redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to + "/scene.png")
                    self.end_headers()
                    return
                if self.path.startswith("/missing"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 (Label Studio's token exchange)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append((self.path, body.get("refresh")))
                data = json.dumps({"access": "short-lived"}).encode()
                self.send_response(200 if body.get("refresh") == "head.payload.sig" else 401)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def hosts():
    other = ImageHost()
    studio = ImageHost(redirect_to=other.url)
    yield studio, other
    studio.close()
    other.close()


CONFIG = label_config(SCENE.taxonomy)


def predict(client, tasks, context=None):
    return client.post("/predict", json={"tasks": tasks, "project": "1.1700000000", "label_config": CONFIG,
                                         "params": {"login": None, "password": None, "context": context}})


def test_setup_then_predict_fetches_with_the_token_from_label_studio_only(served, hosts):
    seg, _, client = served
    studio, other = hosts
    r = client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG, "hostname": studio.url,
                                    "access_token": "tok123", "model_version": None})
    assert r.status_code == 200 and r.json()["model_version"].startswith("clipsam-")
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/scene.png"}},
             {"id": 2, "data": {"image": other.url + "/scene.png"}},
             {"id": 3, "data": {"image": studio.url + "/moved"}}]
    r = predict(client, tasks)
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 3 and all(len(x["result"]) > 0 for x in results)
    assert studio.seen[0] == ("/data/upload/1/scene.png", "Token tok123")
    assert ("/moved", "Token tok123") in studio.seen
    assert other.seen == [("/scene.png", None), ("/scene.png", None)]  # direct, and at the end of the redirect
    expected = seg.segment_everything(SCENE.image)
    shapes = [x for x in results[0]["result"] if x["type"] == "brushlabels"]
    assert len(shapes) == len(expected.regions)
    for res, region in zip(shapes, expected.regions, strict=True):
        assert np.array_equal(lsrle.decode(res["value"]["rle"], *expected.image_size), region.mask())


def test_a_personal_access_token_is_exchanged_once_for_an_access_token(hosts):
    from clipsam.errors import ImageError
    from clipsam.serve.fetch import LabelStudioAccess, fetch

    studio, other = hosts
    access = LabelStudioAccess(studio.url, "head.payload.sig")
    for _ in range(2):
        assert fetch("/data/upload/1/scene.png", access, max_bytes=10 ** 6, timeout=5) == png(SCENE.image)
    upload_path = "/data/upload/1/scene.png"
    assert studio.seen == [("/api/token/refresh", "head.payload.sig"), (upload_path, "Bearer short-lived"),
                           (upload_path, "Bearer short-lived")]
    with pytest.raises(ImageError, match="did not exchange the personal access token"):
        fetch("/x.png", LabelStudioAccess(studio.url, "wrong.token.here"), max_bytes=10 ** 6, timeout=5)
    with pytest.raises(ImageError, match="larger than this server's limit of 100 bytes"):
        fetch(other.url + "/scene.png", access, max_bytes=100, timeout=5)
    with pytest.raises(ImageError, match="does not know where Label Studio is"):
        fetch("/data/upload/1/scene.png", None, max_bytes=10 ** 6, timeout=5)


def test_a_failed_task_in_a_batch_keeps_its_place_and_a_lone_one_is_an_error(served, hosts):
    _, _, client = served
    studio, _ = hosts
    client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG, "hostname": studio.url})
    r = predict(client, [{"id": 1, "data": {"image": "/missing.png"}}, {"id": 2, "data": {"image": "/scene.png"}}])
    first, second = r.json()["results"]
    assert first["result"] == [] and "HTTP 404" in first["error"] and second["result"]
    r = predict(client, [{"id": 1, "data": {"image": "/missing.png"}}])
    assert r.status_code == 400 and "HTTP 404" in one_line_error(r)
    r = predict(client, [{"id": 1, "data": {"image": "s3://bucket/scene.png"}}])
    assert r.status_code == 400 and "not s3" in one_line_error(r)
    r = predict(client, [{"id": 1, "data": {"text": "no image"}}])
    assert r.status_code == 400 and "no image under data.image" in one_line_error(r)
    r = client.post("/setup", json={"schema": "<View><Image"})
    assert r.status_code == 400 and "not valid XML" in one_line_error(r)
    r = client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in one_line_error(r)


def test_interactive_click_gives_sams_mask_with_the_chosen_or_clip_label(served, hosts):
    seg, _, client = served
    studio, _ = hosts
    client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG, "hostname": studio.url})
    h, w = SCENE.image.shape[:2]
    click = {"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": True,
             "value": {"x": CAT_CLICK[0][0] * 100 / w, "y": CAT_CLICK[0][1] * 100 / h, "width": 0.5,
                       "keypointlabels": ["sofa"]}, "original_width": w, "original_height": h}
    task = [{"id": 1, "data": {"image": "/scene.png"}}]
    expected = seg.segment_prompt(SCENE.image, points=CAT_CLICK).regions[0].mask()
    chosen = predict(client, task, {"result": [click]}).json()["results"][0]
    (shape,) = chosen["result"]
    assert shape["value"]["brushlabels"] == ["sofa"]  # the annotator's label wins
    assert np.array_equal(lsrle.decode(shape["value"]["rle"], h, w), expected)
    click["value"].pop("keypointlabels")
    by_clip = predict(client, task, {"result": [click]}).json()["results"][0]
    assert by_clip["result"][0]["value"]["brushlabels"] == ["cat"]  # the oracle's CLIP calls it a cat
    assert len(studio.seen) == 1  # the task's image was fetched once for both clicks


def test_webhook_and_versions(served):
    _, service, client = served
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).json() == {"status": "ok"}
    assert client.get("/versions").json() == {"versions": [service.model_version]}
