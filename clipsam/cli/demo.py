"""``clipsam demo``: the whole pipeline without weights, with real output, on clipsam's oracle scene."""

from __future__ import annotations

from pathlib import Path

import typer

from ..files import atomic_write, check_outputs, marked_image_bytes
from .common import emit_json, fail, guard, json_option, out, overwrite_option, show
from .segment import _regions_table, _rich_tree, _write_outputs


@guard
def demo(
    out_dir: Path = typer.Option(Path("clipsam-demo"), "--out", "-o", help="Folder for the scene, its overlay, "
                                 "HTML page and COCO file (created)."),
    query: str = typer.Option("animal", "--query", "-q", help="A label of the scene's taxonomy to look for."),
    overwrite: bool = overwrite_option(),
    as_json: bool = json_option(),
) -> None:
    """Try clipsam without weights: a synthetic photo with known objects and parts (sofa, car, dog, cat, their
    heads, wheels…) segmented, labelled with a taxonomy, nested into a part-whole tree and exported, by an exact
    stand-in for SAM and CLIP (the oracle the tests use). Real pipeline, real output; only the models are stand-ins."""
    from PIL import Image

    from ..testing import oracle_segmenter, synthetic_scene

    scene = synthetic_scene()
    names = {"scene": "scene.png", "overlay": "overlay.png", "JSON": "result.json", "COCO": "coco.json",
             "HTML report": "page.html"}
    paths = {k: out_dir / v for k, v in names.items()}
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out_dir}: is a file; give a folder (created if missing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    check_outputs([(f"--out ({k})", p) for k, p in paths.items()], [], overwrite=overwrite)
    atomic_write(paths["scene"], marked_image_bytes(Image.fromarray(scene.image), ".png"))
    segmenter = oracle_segmenter(scene)
    tree = segmenter.segment_everything(paths["scene"], taxonomy=scene.taxonomy)
    found = segmenter.segment(paths["scene"], query, taxonomy=scene.taxonomy)
    written = _write_outputs(tree, paths["scene"], segmenter, {k: p for k, p in paths.items() if k != "scene"})
    if as_json:
        emit_json({"tree": tree.to_dict(), "query": found.to_dict(), "files": {k: str(p) for k, p in written}})
        return
    out.print(_rich_tree(tree))
    out.print(_regions_table(found, f"{len(found)} region(s) match {query!r}"))
    for what, path in [("scene", paths["scene"]), *written]:
        out.print(f"{what} written to [bold]{show(path)}[/]")
    out.print("[dim]The models were the oracle stand-ins; with weights, `clipsam segment PHOTO --taxonomy everyday "
              "--tree` does the same on your photos.[/]")
