"""A ``clipsam report`` you can open without any weights: the oracle scene (objects, parts, an unknown region and a
broken file) labelled through the real ``clipsam label`` job, then the report written and, with Chromium
installed, a screenshot of it (the one in the README).

    python examples/report_demo.py                 # writes out/report-demo/ (report.html, report.png)

The oracle segmenter stands in for SAM + CLIP: its masks and labels are exact by construction, so the page shows
what the report looks like, not what a model finds.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from PIL import Image

from clipsam.report import label_report, write_report
from clipsam.testing import oracle_label_run, synthetic_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/report-demo"))
    args = parser.parse_args()
    scene = synthetic_scene()
    photos = args.out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(photos / "scene.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")  # shows up in the errors list
    oracle_label_run(photos, args.out / "labels", scene, force=True)
    page, counts = label_report(args.out / "labels")
    html = args.out / "report.html"
    write_report(html, page)
    print(f"{html}: {counts}")  # noqa: T201
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser:
        shot = args.out / "report.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1100,760", f"--screenshot={shot.resolve()}", html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        print(f"{shot}: screenshot")  # noqa: T201


if __name__ == "__main__":
    main()
