"""``clipsam weights``: list, download, import and verify checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .. import weights as W
from .common import (
    download_progress,
    emit_json,
    err,
    fail,
    guard,
    json_option,
    nullcontext,
    out,
    show,
    weights_needed,
)


@guard
def weights_list(full: bool = typer.Option(False, "--full", metavar="", help="Also each file's full SHA-256 and "
                                            "official URL."),
                 as_json: bool = json_option()) -> None:
    """Show every known checkpoint and whether it is in the cache (--full: full SHA-256 and URL)."""
    rows = []
    for name, c in sorted(W.REGISTRY.items(), key=lambda kv: (kv[1].family != "sam", kv[0])):
        path = W.cache_dir() / c.filename
        rows.append({"name": name, "family": c.family, "cached": path.is_file(), "path": str(path), "url": c.url,
                     "sha256": W.expected_sha256(c) or "", "pinned_on_first_use": not c.sha256, "size": c.size,
                     "license": c.license, "description": c.description})
    if as_json:
        emit_json({"cache_dir": str(W.cache_dir()), "offline": W.is_offline(), "checkpoints": rows})
        return
    table = Table(title=show(f"Checkpoints (cache: {W.cache_dir()})"), title_justify="left", header_style="bold")
    for col in ("name", "model", "cached", "sha256", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        sha = r["sha256"][:12] + "…" if r["sha256"] else "[dim]pinned on first use[/]"
        table.add_row(show(r["name"]), r["family"].upper(), "[green]yes[/]" if r["cached"] else "[dim]no[/]", sha,
                      show(r["description"]))
    out.print(table)
    for r in rows if full else ():  # one unwrapped line each: hashes and URLs copy whole from any terminal
        out.print(f"{show(r['name'])}  {r['sha256'] or '(pinned on first use)'}  {show(r['url'])}", soft_wrap=True,
                  highlight=False)
    out.print("[dim]tiny-random (SAM and CLIP): random-weight toy models for tests; no download, "
              "output meaningless.[/]")


#: Which models each verb loads by default: ``sam``, ``clip`` or both (search embeds text only).
VERB_MODELS = {"segment": ("sam", "clip"), "label": ("sam", "clip"), "index": ("sam", "clip"), "search": ("clip",)}


def verb_models(verb: str, sam: str | None = None, clip: str | None = None) -> list[str]:
    """The model names *verb* loads (the defaults, or *sam* / *clip*)."""
    from ..segmenter import DEFAULT_CLIP, DEFAULT_SAM

    chosen = {"sam": sam or DEFAULT_SAM, "clip": clip or DEFAULT_CLIP}
    return [chosen[kind] for kind in VERB_MODELS[verb]]


@guard
def weights_download(
    names: list[str] | None = typer.Argument(None, help="Checkpoint names (see `clipsam weights list`)."),
    verb: str | None = typer.Option(None, "--for", help="Everything a verb needs with its default models: "
                                    f"{', '.join(VERB_MODELS)} (with --sam/--clip: those models)."),
    sam: str | None = typer.Option(None, "--sam", help="With --for: this SAM model instead of the default."),
    clip: str | None = typer.Option(None, "--clip", help="With --for: this CLIP model instead of the default."),
    force: bool = typer.Option(False, "--force", help="Download again even when cached.", metavar=""),
    as_json: bool = json_option(),
) -> None:
    """Download checkpoints into the cache, verifying their SHA-256."""
    if verb is not None:
        if verb not in VERB_MODELS:
            fail(f"--for must be one of {', '.join(VERB_MODELS)}, got {verb!r}")
        names = [*(names or []), *verb_models(verb, sam, clip)]
    elif sam or clip:
        fail("--sam and --clip go with --for VERB; name checkpoints as arguments otherwise")
    if not names:
        fail("name the checkpoints to download (see `clipsam weights list`), or give --for VERB")
    names = weights_needed(names)
    if W.is_offline():
        fail("offline mode is on (CLIPSAM_OFFLINE / HF_HUB_OFFLINE): nothing can be downloaded")
    done = []
    with download_progress(not as_json) as make:
        for name in names:
            ckpt = W.get(name)
            path = W.fetch(ckpt.name, progress=make(ckpt.name)) if force or not W.is_cached(ckpt.name) else \
                W.ensure(ckpt.name)
            done.append({"name": ckpt.name, "path": str(path), "sha256": W.expected_sha256(ckpt)})
    if as_json:
        emit_json(done)
    else:
        for d in done:
            out.print(f"[green]ok[/] {show(d['name'])} -> {show(d['path'])}")


@guard
def weights_import(
    name: str = typer.Argument(..., help="Checkpoint name, e.g. vit_b."),
    file: Path = typer.Argument(..., help="The checkpoint file you already have."),
    as_json: bool = json_option(),
) -> None:
    """Copy a checkpoint file you already have into the cache (its SHA-256 is checked first)."""
    path = W.import_file(name, file)
    if as_json:
        emit_json({"name": W.get(name).name, "path": str(path), "sha256": W.get(name).sha256})
    else:
        out.print(f"[green]ok[/] imported {show(file)} as {show(W.get(name).name)} -> {show(path)}")


@guard
def weights_verify(
    names: list[str] | None = typer.Argument(None, help="Checkpoints to check (default: all cached)."),
    as_json: bool = json_option(),
) -> None:
    """Re-hash cached checkpoints; exit 1 if any does not match its pinned SHA-256."""
    results = list(W.verify(names or None))
    if not names:
        results = [r for r in results if r.status != "missing"]
    bad = [r for r in results if r.status == "mismatch"] + ([r for r in results if r.status == "missing"] if names
                                                            else [])
    if as_json:
        emit_json([{"name": r.name, "path": str(r.path), "status": r.status, "sha256": r.sha256} for r in results])
    else:
        if not results:
            out.print(f"no checkpoints cached in {show(W.cache_dir())}")
        for r in results:
            colour = {"ok": "green", "missing": "yellow", "mismatch": "red"}[r.status]
            out.print(f"[{colour}]{r.status}[/] {show(r.name)} ({show(r.path)})")
    if bad:
        raise typer.Exit(1)


@guard
def weights_export(
    names: list[str] = typer.Argument(..., help="SAM 1 or CLIP names (tiny-random: both tiny models)."),
    as_json: bool = json_option(),
) -> None:
    """Export models to ONNX for --runtime onnx ahead of time (else the first run does it), into
    $CLIPSAM_HOME/onnx; checkpoints are downloaded first if needed."""
    from ..models import onnx
    from ..models.backends import TINY_VERSIONS, backend_of
    from ..models.base import TINY
    from .common import check_model, ensure_weights

    why = onnx.unavailable()
    if why:
        fail(why[0].upper() + why[1:])
    families = []
    for name in names:
        if name == TINY:
            families += [(name, "sam"), (name, "clip")]
        elif name in TINY_VERSIONS or not backend_of(name).can("onnx"):
            fail(f"{show(name)}: only SAM 1 and CLIP models are exported to ONNX (SAM 2.1 and SAM 3 run in PyTorch)")
        else:
            families.append((name, W.get(name).family))
            check_model(name, families[-1][1])
    ensure_weights([n for n in names if n != TINY], show=not as_json)
    rows = []
    with err.status("exporting to ONNX… (minutes for a large model, once)", spinner="dots") if not as_json \
            else nullcontext():
        for name, family in families:
            rows += _export_one(name, family)
    if as_json:
        emit_json({"cache": str(onnx.cache_root()), "exports": rows})
        return
    for r in rows:
        out.print(f"[green]ok[/] {show(r['name'])} {r['part']} -> {show(r['path'])}", soft_wrap=True)


def _export_one(name: str, family: str) -> list[dict[str, str]]:
    from ..models import onnx
    from ..models.build import build_embedder, build_proposer

    build = build_proposer if family == "sam" else build_embedder
    model = build(name, "cpu", download=False, runtime="onnx")
    return [{"name": name, "part": g.part, "path": str(g.path)} for g in onnx.graphs(model)]
