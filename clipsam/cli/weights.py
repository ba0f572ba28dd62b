"""``clipsam weights``: list, download, import and verify checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .. import weights as W
from .common import (
    download_progress,
    emit_json,
    fail,
    guard,
    json_option,
    out,
    show,
)


@guard
def weights_list(as_json: bool = json_option()) -> None:
    """Show every known checkpoint and whether it is in the cache."""
    rows = []
    for name, c in sorted(W.REGISTRY.items(), key=lambda kv: (kv[1].family != "sam", kv[0])):
        path = W.cache_dir() / c.filename
        rows.append({"name": name, "family": c.family, "cached": path.is_file(), "path": str(path), "url": c.url,
                     "sha256": W.expected_sha256(c) or "", "pinned_on_first_use": not c.sha256, "size": c.size,
                     "license": c.license, "description": c.description})
    if as_json:
        emit_json({"cache_dir": str(W.cache_dir()), "offline": W.is_offline(), "checkpoints": rows})
        return
    table = Table(title=f"Checkpoints (cache: {W.cache_dir()})", title_justify="left", header_style="bold")
    for col in ("name", "model", "cached", "sha256", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"].upper(), "[green]yes[/]" if r["cached"] else "[dim]no[/]",
                      r["sha256"][:12] + "…" if r["sha256"] else "[dim]pinned on first use[/]", r["description"])
    out.print(table)
    out.print("[dim]tiny-random (SAM and CLIP): random-weight toy models for tests; no download, "
              "output meaningless.[/]")


@guard
def weights_download(
    names: list[str] = typer.Argument(..., help="Checkpoint names (see `clipsam weights list`)."),
    force: bool = typer.Option(False, "--force", help="Download again even when cached."),
    as_json: bool = json_option(),
) -> None:
    """Download checkpoints into the cache, verifying their SHA-256."""
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
