"""The ``clipsam`` command line: a thin layer that parses, calls the library and renders.

One module per verb group (:mod:`.segment`, :mod:`.dataset` (label, eval), :mod:`.search` (index, search),
:mod:`.report`, :mod:`.weights`, :mod:`.taxonomy`); what they share (one-line errors, escaping, option checks and
definitions) is in :mod:`.common`. Every verb has ``--json`` (machine output on stdout); errors are one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from .._version import __version__
from . import dataset, demo, report, search, segment, serve, taxonomy, weights
from .common import emit_json, err, json_option, out, show

#: The click that typer uses (some typer versions vendor their own copy), for its exception classes.
_click_exceptions = importlib.import_module(typer.BadParameter.__module__)
_NO_ARGS_IS_HELP = getattr(_click_exceptions, "NoArgsIsHelpError", ())


class OneLineErrors(TyperGroup):
    """The clipsam command group: usage errors (a missing argument, an unknown option, a bad value) are one line on
    stderr, like every other error, instead of click's boxed paragraph."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as exc:  # `clipsam weights`: the group's help
            exc.show()
            sys.exit(0)
        except _click_exceptions.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err.print(f"[bold red]error:[/] {show(exc.format_message())}{show(hint)}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("[bold red]error:[/] aborted", highlight=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _version(value: bool) -> None:
    if value:
        out.print(__version__, highlight=False)
        raise typer.Exit()


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="Text-prompted, open-vocabulary, hierarchical segmentation with Segment Anything + CLIP.")


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, metavar="",
                                       help="Print clipsam's version and exit.")) -> None:
    """Text-prompted, open-vocabulary, hierarchical segmentation with Segment Anything + CLIP."""
weights_app = typer.Typer(no_args_is_help=True, help="List, download, import, verify and export (ONNX) checkpoints.")
taxonomy_app = typer.Typer(no_args_is_help=True, help="Browse and validate label taxonomies.")
app.add_typer(weights_app, name="weights")
app.add_typer(taxonomy_app, name="taxonomy")
labelstudio_app = typer.Typer(no_args_is_help=True, help="Label Studio: labeling configs for a taxonomy.")
app.add_typer(labelstudio_app, name="labelstudio")

app.command()(segment.segment)
app.command()(dataset.label)
app.command("eval")(dataset.eval_cmd)
app.command()(search.index)
app.command()(search.search)
app.command()(report.report)
app.command()(demo.demo)
app.command()(serve.serve)
labelstudio_app.command("config")(serve.labelstudio_config)
for _name in ("list", "download", "import", "verify", "export"):
    weights_app.command(_name)(getattr(weights, f"weights_{_name}"))
for _name in ("list", "show", "path", "search", "validate"):
    taxonomy_app.command(_name)(getattr(taxonomy, f"taxonomy_{_name}"))


@app.command()
def version(as_json: bool = json_option()) -> None:
    """Print clipsam's version (with --json: also Python's, PyTorch's and the optional backends')."""
    if not as_json:
        out.print(__version__, highlight=False)
        return
    import importlib.metadata as md
    import platform

    def installed(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    emit_json({"clipsam": __version__, "python": platform.python_version(),
               **{name: installed(name) for name in ("torch", "segment-anything", "open_clip_torch", "sam2",
                                                     "transformers", "lancedb")}})


def main() -> None:
    app()


__all__ = ["app", "main"]
