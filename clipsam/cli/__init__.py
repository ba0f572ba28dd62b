"""The ``clipsam`` command line: a thin layer that parses, calls the library and renders.

One module per verb group (:mod:`.segment`, :mod:`.dataset` (label, eval), :mod:`.search` (index, search),
:mod:`.report`, :mod:`.weights`, :mod:`.taxonomy`); what they share (one-line errors, escaping, option checks and
definitions) is in :mod:`.common`. Every verb has ``--json`` (machine output on stdout); errors are one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import typer

from .._version import __version__
from . import dataset, report, search, segment, taxonomy, weights
from .common import out

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
                  help="Text-prompted, open-vocabulary, hierarchical segmentation with Segment Anything + CLIP.")
weights_app = typer.Typer(no_args_is_help=True, help="List, download, import and verify model checkpoints.")
taxonomy_app = typer.Typer(no_args_is_help=True, help="Browse and validate label taxonomies.")
app.add_typer(weights_app, name="weights")
app.add_typer(taxonomy_app, name="taxonomy")

app.command()(segment.segment)
app.command()(dataset.label)
app.command("eval")(dataset.eval_cmd)
app.command()(search.index)
app.command()(search.search)
app.command()(report.report)
for _name in ("list", "download", "import", "verify"):
    weights_app.command(_name)(getattr(weights, f"weights_{_name}"))
for _name in ("list", "show", "path", "search", "validate"):
    taxonomy_app.command(_name)(getattr(taxonomy, f"taxonomy_{_name}"))


@app.command()
def version() -> None:
    """Print clipsam's version."""
    out.print(__version__)


def main() -> None:
    app()


__all__ = ["app", "main"]
