"""``clipsam taxonomy``: browse and validate label taxonomies."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.tree import Tree

from .common import (
    TAXONOMY_HELP,
    emit_json,
    fail,
    guard,
    json_option,
    out,
    show,
)


def _taxonomy_tree(node: Any, tree: Tree, depth: int | None, level: int = 1) -> None:
    if depth is not None and level > depth:
        return
    for child in node.children:
        syn = [p for p in child.prompts if p != child.name]
        branch = tree.add(f"[bold]{show(child.name)}[/]" + (f" [dim]({show(', '.join(syn))})[/]" if syn else ""))
        _taxonomy_tree(child, branch, depth, level + 1)
    for part in node.parts:
        branch = tree.add(f"[cyan]{show(part.name)}[/] [dim]part[/]")
        _taxonomy_tree(part, branch, depth, level + 1)


@guard
def taxonomy_list(as_json: bool = json_option()) -> None:
    """The taxonomies shipped with clipsam."""
    from ..core.taxonomy import load_taxonomy, shipped_taxonomies

    rows = []
    for name, path in shipped_taxonomies().items():
        t = load_taxonomy(path)
        rows.append({"name": name, "labels": len(t), "top_level": len(t.top),
                     "parts": sum(1 for n in t if n.is_part), "description": t.description, "path": str(path)})
    if as_json:
        emit_json(rows)
        return
    table = Table(title="Shipped taxonomies", title_justify="left", header_style="bold")
    for col in ("name", "labels", "top level", "parts", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(show(r["name"]), str(r["labels"]), str(r["top_level"]), str(r["parts"]), show(r["description"]))
    out.print(table)


@guard
def taxonomy_show(
    name: str = typer.Argument(..., help="Shipped name or YAML file."),
    depth: int | None = typer.Option(None, "--depth", "-d", help="Levels to show."),
    as_json: bool = json_option(),
) -> None:
    """Print a taxonomy as a tree (is-a children in bold, parts in cyan)."""
    from ..core.taxonomy import load_taxonomy

    if depth is not None and depth < 1:
        fail(f"--depth must be at least 1, got {depth}")
    t = load_taxonomy(name)
    if as_json:
        emit_json(t.to_dict())
        return
    tree = Tree(f"[bold]{show(t.name)}[/] ({len(t)} labels){' — ' + show(t.description) if t.description else ''}")
    _taxonomy_tree(t.root, tree, depth)
    out.print(tree)


@guard
def taxonomy_path(
    label: str = typer.Argument(..., help="A label or synonym, e.g. puppy."),
    taxonomy: str = typer.Option("everyday", "--taxonomy", "-t", help=TAXONOMY_HELP),
    as_json: bool = json_option(),
) -> None:
    """Where a label sits: `clipsam taxonomy path puppy` prints animal/dog/puppy."""
    from ..core.taxonomy import load_taxonomy

    hits = load_taxonomy(taxonomy).find(label)
    if as_json:
        emit_json([{"path": n.path_str, "is_part": n.is_part} for n in hits])
    elif hits:
        for n in hits:
            out.print(show(n.path_str) + (" [dim](part)[/]" if n.is_part else ""), highlight=False)
    if not hits:
        import difflib

        tax = load_taxonomy(taxonomy)
        names = sorted({n.name for n in tax} | {p for n in tax for p in n.prompts})
        close = difflib.get_close_matches(label, names, n=3, cutoff=0.6)
        found = tax.search(label)
        hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close else
                f"`clipsam taxonomy search {label}` finds {len(found)} label(s) that contain it" if found else
                f"see `clipsam taxonomy show {taxonomy}`")
        fail(f"{label!r} is not in taxonomy {taxonomy!r}; {hint}", 1)


@guard
def taxonomy_search(
    word: str = typer.Argument(..., help="Text to look for in names and synonyms."),
    taxonomy: str = typer.Option("everyday", "--taxonomy", "-t", help=TAXONOMY_HELP),
    as_json: bool = json_option(),
) -> None:
    """Labels whose name or a synonym contains WORD."""
    from ..core.taxonomy import load_taxonomy

    hits = load_taxonomy(taxonomy).search(word)
    if as_json:
        emit_json([{"path": n.path_str, "prompts": list(n.prompts), "is_part": n.is_part} for n in hits])
        return
    if not hits:
        out.print(f"no label in {show(repr(taxonomy))} mentions {show(repr(word))}", highlight=False)
    for n in hits:
        out.print(f"{show(n.path_str)}  [dim]{show(', '.join(n.prompts))}{' (part)' if n.is_part else ''}[/]",
                  highlight=False)


@guard
def taxonomy_validate(
    file: str = typer.Argument(..., help="A taxonomy YAML file (or shipped name)."),
    as_json: bool = json_option(),
) -> None:
    """Check a taxonomy file; errors name the file and the node."""
    from ..core.taxonomy import load_taxonomy

    t = load_taxonomy(file)
    summary = {"name": t.name, "labels": len(t), "top_level": len(t.top), "parts": sum(1 for n in t if n.is_part),
               "valid": True}
    if as_json:
        emit_json(summary)
    else:
        out.print(f"[green]ok[/] {show(file)}: {summary['labels']} labels, {summary['top_level']} top-level, "
                  f"{summary['parts']} parts")
