"""Load on ``clipsam serve``: N concurrent clients over real HTTP (uvicorn on 127.0.0.1) doing what annotation tools
do -- clicks on a few images (the first click on an image encodes it, the next ones reuse the cached embedding),
text queries, and segment-everything -- and a burst past the queue bound.

Reports throughput, p50/p95 latency per kind, the embedding cache's hit rate, what a repeated click saves over a
first click, and that every request was answered (200, or 503 when the queue was full; none lost).

    python benchmarks/serve.py --models tiny --clients 4
    python benchmarks/serve.py --models vitb --clients 4   # SAM ViT-B + CLIP ViT-B/16 (real weights if cached)
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import clip_model, machine, photo, sam_model  # noqa: E402


def segmenter(kind: str):
    from clipsam import Segmenter
    from clipsam.testing import tiny_segmenter

    if kind == "tiny":
        return tiny_segmenter(taxonomy="everyday"), "tiny-random SAM + CLIP"
    sam, sam_w = sam_model("vit_b")
    model, preprocess, tokenizer, clip_w = clip_model()
    seg = Segmenter.from_models(sam, model, preprocess=preprocess, tokenizer=tokenizer, device="cpu",
                                taxonomy="everyday", text_cache=False, generator_params={"points_per_side": 16})
    return seg, f"SAM ViT-B ({sam_w} weights) + CLIP ViT-B/16 ({clip_w} weights), 16x16 grid"


def multipart(image: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "clipsambench"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(url: str, path: str, image: bytes, fields: dict[str, str]) -> tuple[int, float]:
    body, ctype = multipart(image, fields)
    req = urllib.request.Request(url + path, data=body, method="POST", headers={"Content-Type": ctype})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.perf_counter() - t0


def serve(seg, queue: int, workers: int):
    import uvicorn

    from clipsam.serve import Limits, Service, create_app

    service = Service(seg, Limits(workers=workers, queue=queue, timeout_s=600))
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return service, server, thread, f"http://127.0.0.1:{port}"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", choices=("tiny", "vitb"), default="tiny")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--clicks", type=int, default=4, help="clicks per image per client")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--side", type=int, default=640, help="long side of the test photos")
    args = ap.parse_args()

    seg, what = segmenter(args.models)
    print(f"# {machine()}\n# models: {what}; {args.clients} clients, {args.images} images, {args.workers} worker(s)")
    names = ("chelsea", "astronaut", "coffee", "rocket", "camera")
    images = []
    for k in range(args.images):
        buf = io.BytesIO()
        Image.fromarray(photo(args.side, name=names[k % len(names)])).save(buf, "PNG")
        images.append(buf.getvalue())
    service, server, thread, url = serve(seg, queue=4 * args.clients, workers=args.workers)
    rng = np.random.default_rng(0)
    h, w = photo(args.side, name="chelsea").shape[:2]

    def client(c: int) -> list[tuple[str, int, float]]:
        out = []
        for k, image in enumerate(images):
            for j in range(args.clicks):
                x, y = int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))
                status, s = call(url, "/v1/prompt", image, {"points": json.dumps([[x, y]])})
                first = j == 0 and c == 0
                out.append(("first click" if first else "repeat click", status, s))
            if k == c % len(images):
                out.append(("query", *call(url, "/v1/query", image, {"query": "cat, person, cup"})))
                out.append(("everything", *call(url, "/v1/everything", image, {})))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        records = [r for rs in pool.map(client, range(args.clients)) for r in rs]
    wall = time.perf_counter() - t0
    health = service.health()
    print(f"\n{len(records)} requests in {wall:.1f} s: {len(records) / wall:.2f} requests/s; statuses "
          f"{sorted({s for _, s, _ in records})}")
    print(f"{'kind':<14}{'n':>5}{'p50 s':>10}{'p95 s':>10}")
    for kind in ("first click", "repeat click", "query", "everything"):
        times = [s for k, st, s in records if k == kind and st == 200]
        print(f"{kind:<14}{len(times):>5}{pct(times, 50):>10.3f}{pct(times, 95):>10.3f}")
    cache = health["embedding_cache"]
    print(f"embedding cache: {cache['hits']} hits, {cache['misses']} misses, hit rate {cache['hit_rate']}")

    # what a repeated click saves, measured alone (no other client queued in front): a fresh image, then a click on it
    fresh = io.BytesIO()
    Image.fromarray(photo(args.side, name="coffee")[:, ::-1].copy()).save(fresh, "PNG")
    first = [call(url, "/v1/prompt", fresh.getvalue(), {"points": "[[50, 60]]"})[1]]
    repeat = [call(url, "/v1/prompt", fresh.getvalue(), {"points": f"[[{60 + i}, 70]]"})[1] for i in range(5)]
    print(f"alone: first click {first[0]:.3f} s, repeated click median {statistics.median(repeat):.3f} s "
          f"({first[0] / statistics.median(repeat):.1f}x faster)")

    # a burst past the bound: 1 worker and a queue of 2 get 12 requests at once: the rest are 503, none lost
    small, server2, thread2, url2 = serve(seg, queue=2, workers=1)
    with ThreadPoolExecutor(12) as pool:
        burst = list(pool.map(lambda _: call(url2, "/v1/everything", images[0], {})[0], range(12)))
    counts = small.health()["requests"]
    print(f"burst of 12 on 1 worker + queue 2: {burst.count(200)} x 200, {burst.count(503)} x 503, "
          f"other {[s for s in burst if s not in (200, 503)]}; server counted {counts['done']} done, "
          f"{counts['busy']} busy, {counts['failed']} failed")
    for srv, th in ((server, thread), (server2, thread2)):
        srv.should_exit = True
        th.join(30)


if __name__ == "__main__":
    main()
