"""What every verb shares: consoles, one-line errors (never a traceback), escaping of user strings for rich, option
checks, model and weight checks, progress bars, JSON output, and shared option definitions."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .. import weights as W
from ..core.image import printable
from ..errors import ClipsamError

out = Console()
err = Console(stderr=True)

SAM_HELP = ("SAM model: vit_b, vit_l, vit_h, sam2.1_hiera_tiny/_small/_base_plus/_large, sam3 (concepts from text; "
            "clipsam\\[sam3]), tiny-random, tiny-random-sam2 or tiny-random-sam3 "
            "(random weights, for tests only: output meaningless).")
def _shipped() -> str:
    from ..core.taxonomy import shipped_taxonomies

    return ", ".join(shipped_taxonomies())


#: Help of every --taxonomy option: the shipped names are listed from prompts/, so the help never falls behind.
TAXONOMY_HELP = f"Taxonomy: a shipped name ({_shipped()}) or a YAML file."


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 mask``, ``2 masks``, ``1,024 regions``."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


CLIP_HELP = "CLIP model: ViT-B-16/openai, ViT-B-32/openai, ViT-L-14/openai, … or tiny-random (tests only)."
JSON_HELP = "Print machine-readable JSON on stdout instead of tables."
#: Overlay formats ``--out`` can write (Pillow picks the format from the suffix).
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: a terminal obeys them (ESC starts
#: colour, title and hyperlink sequences; CR and newline forge lines), so user strings show them as escapes.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def plain(text: Any) -> str:
    """A user-provided string made safe for a terminal: undecodable bytes of file names shown as U+FFFD, control
    characters as escapes (``\\x1b``, ``\\n``), so that one message stays one line and sends no terminal
    sequence."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1] if m.group() not in "\u2028\u2029" else
                        f"\\u{ord(m.group()):04x}", printable(str(text)))


def show(text: Any) -> str:
    """A user-provided string made safe for rich: :func:`plain`, with rich markup escaped."""
    return escape(plain(text))


class _PlainFormatter(logging.Formatter):
    """Log lines with every user string shown by :func:`plain` (one line, no terminal sequences)."""

    def format(self, record: logging.LogRecord) -> str:
        return plain(super().format(record))


def verbose_logging(level: int = logging.INFO) -> None:
    """``--verbose``: clipsam's log on stderr, made safe for the terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {show(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def os_error_message(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    where = exc.filename if exc.filename is not None else ""
    text = f"{where}: " if where else ""
    text += f"{exc.strerror or exc}" + (f" ({name})" if name else "")
    if exc.errno == errno.ENOSPC:
        text += "; finished work is kept: free some space and run the same command again"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += "; choose a writable place (CLIPSAM_HOME sets clipsam's cache folder)"
    return text


#: Exceptions typer itself renders (usage errors, exits): typer vendors click in some versions, so find its class.
PASS_THROUGH = (typer.Exit, typer.Abort,
                 *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every error into one line on stderr and a non-zero exit, never a traceback (CLIPSAM_DEBUG=1 shows it)."""
    import functools
    import os

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:
            if os.environ.get("CLIPSAM_DEBUG"):
                raise
            if isinstance(exc, ClipsamError):
                fail(str(exc))
            elif isinstance(exc, OSError):
                fail(os_error_message(exc))
            elif isinstance(exc, RecursionError):
                fail("input nested too deeply to process")
            elif isinstance(exc, MemoryError):
                fail("out of memory; try a smaller --max-side or fewer --workers")
            else:
                fail(f"unexpected {type(exc).__name__}: {exc} (please report it; CLIPSAM_DEBUG=1 shows the traceback)",
                      1)

    return wrapper


def check_output_file(path: Path | None, option: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output path that cannot be written, before any model runs."""
    if path is None:
        return
    if path.is_dir() or str(path).endswith(("/", "\\")):
        fail(f"{option} {path}: is a folder; give a file name" + (f" ending in {', '.join(suffixes)}"
                                                                 if suffixes else ""))
    if suffixes is not None and path.suffix.lower() not in suffixes:
        fail(f"{option} {path}: unsupported file type {path.suffix or '(none)'!r}; use one of {', '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        fail(f"{option} {path}: folder {parent} does not exist")
    problem = writable(parent)
    if problem:  # a read-only disk, /proc, no permission: said before any model runs
        fail(f"{option} {path}: cannot write into {parent} ({problem})")


def writable(folder: Path) -> str:
    """Why no file can be created in *folder* (``""``: it can), found by creating and removing a temporary file:
    permission bits alone do not show a read-only disk to root, nor that ``/proc`` takes no new files."""
    from ..files import temp_path

    probe = temp_path(folder / "probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        return f"{exc.strerror} ({errno.errorcode.get(exc.errno or 0, '?')})"
    os.close(fd)
    os.unlink(probe)
    return ""


def overwrite_option() -> Any:
    return typer.Option(False, "--overwrite", metavar="",
                        help="Replace output files that clipsam did not write (never an input).")


def check_device(device: str) -> None:
    """Fail on an unavailable --device before weights are downloaded or models built."""
    from ..core.config import check_device_name
    from ..models.build import resolve_device

    check_device_name(device)
    resolve_device(device)


def check_workers(workers: int) -> None:
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}")


def check_labels(labels: list[str], taxonomy: Any, option: str) -> None:
    """Refuse label filters that name nothing in *taxonomy*, suggesting the closest names."""
    import difflib

    names = sorted({n.name for n in taxonomy} | {p for n in taxonomy for p in n.prompts}
                   | {n.path_str for n in taxonomy})
    for lbl in labels:
        if not taxonomy.find(lbl):
            close = difflib.get_close_matches(lbl, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                f" (see `clipsam taxonomy show {taxonomy.name}`)"
            fail(f"{option} {lbl!r} names no label of taxonomy {taxonomy.name!r}{hint}")


def generator_params(points_per_side: int | None) -> dict[str, Any]:
    """--points-per-side as generator parameters (a model entry's own defaults come with the Segmenter)."""
    from ..core.config import check_generator_params

    return check_generator_params({} if points_per_side is None else {"points_per_side": points_per_side})


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def download_progress(enabled: bool) -> Iterator[Callable[[str], Callable[[int, int | None], None]]]:
    """Yields ``make(name) -> progress callback`` drawing one rich bar per download (on stderr)."""
    if not enabled:
        yield lambda name: (lambda done, total: None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=err, transient=False)
    tasks: dict[str, Any] = {}

    def make(name: str) -> Callable[[int, int | None], None]:
        def update(done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)
        return update

    with progress:
        yield make


def check_model(name: str, family: str) -> None:
    """Refuse an unknown or wrong-family model name before anything is downloaded or built."""
    from ..models.backends import TINY_VERSIONS

    tiny = sorted(TINY_VERSIONS) if family == "sam" else ["tiny-random"]
    if name in tiny:
        return
    known = sorted(n for n, c in W.REGISTRY.items() if c.family == family) + tiny
    try:
        ckpt = W.get(name)
    except ClipsamError:
        fail(f"unknown {family.upper()} model {name!r}; choose one of: {', '.join(known)}")
    if ckpt.family != family:
        fail(f"{name!r} is a {ckpt.family.upper()} checkpoint, not {family.upper()}; "
              f"choose one of: {', '.join(known)}")


def weights_needed(names: list[str]) -> list[str]:
    """The registry checkpoints behind model *names* (tiny-random needs none); SAM 3 brings the SAM whose automatic
    masks complete its results (the segmenter's default ``unknown_sam``)."""
    from ..models.backends import TINY_VERSIONS

    wanted = [W.get(n).name for n in names if n not in TINY_VERSIONS]
    if any(W.get(n).extra.get("backend") == "sam3" for n in wanted):
        from ..segmenter import DEFAULT_SAM

        wanted.append(DEFAULT_SAM)
    return list(dict.fromkeys(wanted))


def ensure_weights(names: list[str], show: bool, verb: str | None = None) -> None:
    """Fetch missing registry weights up front, with progress bars; offline, one error names every missing file."""
    with download_progress(show) as make:
        W.ensure_all(weights_needed(names), verb=verb, progress=make)


def parse_point(text: str) -> tuple[float, float, int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1]), 1
        if len(parts) == 3 and parts[2] in ("0", "1"):
            return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        pass
    raise typer.BadParameter(f"{text!r}: expected x,y or x,y,label with label 1 (foreground) or 0 (background)")


def parse_box(text: str) -> list[float]:
    import math

    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise typer.BadParameter(f"{text!r}: expected x0,y0,x1,y1 in pixels")
    return vals


@contextmanager
def nullcontext() -> Iterator[None]:
    yield


# -- shared option definitions -------------------------------------------------------------------------------
def sam_option() -> Any:
    return typer.Option("vit_b", "--sam", help=SAM_HELP)


def clip_option() -> Any:
    return typer.Option("ViT-B-16/openai", "--clip", help=CLIP_HELP)


def device_option() -> Any:
    return typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")


def runtime_option() -> Any:
    return typer.Option("torch", "--runtime", help="What runs SAM 1 and CLIP: torch, onnx (ONNX Runtime on a CPU: "
                        "the same masks, faster; exported once into $CLIPSAM_HOME/onnx) or auto.")


def check_runtime(runtime: str, device: str) -> None:
    """Fail on an unknown --runtime, or onnx on a GPU, before anything is downloaded or built."""
    from ..core.settings import RUNTIMES
    from ..segmenter import check_runtime as check

    if runtime not in RUNTIMES:
        fail(f"--runtime must be one of {', '.join(RUNTIMES)}, got {show(runtime)!r}")
    check(runtime, device)


def json_option() -> Any:
    return typer.Option(False, "--json", help=JSON_HELP, metavar="")

