"""The user's files: atomic writes, links, bounded names, link-safe opens, and what clipsam may overwrite.

clipsam's promises about files, in one place (README, "Your files and credentials"):

- **Inputs are never changed.** No output path may resolve to an input file (links are followed first).
- **Only clipsam's own files are replaced.** An existing output file is replaced only when clipsam wrote it
  (:func:`written_by_clipsam` reads the marker every file it writes carries) or the user asked (``--overwrite``).
- **All or nothing.** Every file is written to a temporary file beside it, synced and renamed into place; a kill or
  a full disk leaves the old file (or none), never half of one.
- **Names stay within the file system's limits.** Temporary names are bounded whatever the target's name; derived
  names are shortened with a hash of the full name when they would not fit (:func:`bounded_name`).
- **Links are not followed when writing.** Temporary files are created with ``O_EXCL | O_NOFOLLOW`` under an
  unpredictable name; a rename replaces a planted link rather than writing through it; lock files must be regular
  files owned by the user (:func:`open_owned`).

Pure standard library (Pillow only to read an image's marker); no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ClipsamError, OutputError

__all__ = ["MAX_DATA_BYTES", "MAX_IMAGE_BYTES", "NAME_MAX", "atomic_write", "bounded_name", "check_outputs",
           "check_regular", "fs_bytes", "marked_image_bytes", "open_owned", "read_capped", "read_text_capped",
           "replace_link", "same_file", "temp_path", "written_by_clipsam"]

#: Longest file name (one path component) in bytes on the file systems clipsam writes to (ext4, XFS, APFS, NTFS…).
NAME_MAX = 255
#: What clipsam writes into its overlays (PNG text chunk / EXIF ``Software``) so a later run knows the file is its.
SOFTWARE = "clipsam"
#: Largest list, COCO, taxonomy or result file clipsam reads (a size cap: a runaway file must not fill memory).
MAX_DATA_BYTES = 8 << 30
#: Largest image file clipsam reads or hashes.
MAX_IMAGE_BYTES = 4 << 30
#: Bytes of a file read to find clipsam's marker.
MARKER_BYTES = 1 << 16
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def fs_bytes(name: str) -> int:
    """Length of *name* in bytes as the file system sees it (undecodable bytes count once)."""
    return len(os.fsencode(name))


def _cut(name: str, limit: int) -> str:
    """The longest prefix of *name* whose encoding fits *limit* bytes, never splitting a character."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    out = name
    while fs_bytes(out) > limit:
        out = out[:-1]
    return out


def bounded_name(name: str, limit: int = NAME_MAX) -> str:
    """*name* if it fits in *limit* bytes, else a prefix of it + ``~`` + 12 hex digits of the full name's SHA-1,
    *limit* bytes at most: distinct long names stay distinct, and the same name always maps to the same result."""
    if fs_bytes(name) <= limit:
        return name
    tag = "~" + hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
    return _cut(name, limit - len(tag)) + tag


def temp_path(path: Path) -> Path:
    """An unpredictable temporary name beside *path* (``.<name>.<pid>.<random>.tmp``), within :data:`NAME_MAX`
    bytes however long *path*'s name is; clipsam's cleanups remove ``.*.tmp`` files of killed runs."""
    suffix = f".{os.getpid()}.{secrets.token_hex(4)}.tmp"
    return path.with_name("." + bounded_name(path.name, NAME_MAX - 1 - len(suffix)) + suffix)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write *data* to *path* all or nothing: a new temporary file (never an existing one or a link: ``O_EXCL |
    O_NOFOLLOW``), fsync, rename over *path*. On any failure (a full disk) the temporary file is removed and *path*
    keeps its old content. A link at *path* is replaced by the file, not written through."""
    path = Path(path)
    tmp = temp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    try:
        with open(tmp, "wb", opener=lambda name, _: os.open(name, flags, mode)) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def replace_link(target: str | os.PathLike, link: Path) -> None:
    """Make *link* a symbolic link to *target* (absolute), replacing a link there atomically."""
    tmp = temp_path(link)
    os.symlink(os.path.abspath(target), tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether *a* and *b* are the same existing file (after links; hard links count)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def open_owned(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """Open *path* without following a link, and only if it is a regular file owned by this user (or new).

    For files that other users could plant in a shared folder (a lock file on NFS): a link there would make clipsam
    truncate or write the file it points to.

    Raises:
        OutputError: *path* is a link, not a regular file, or owned by another user.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = None
        if mode is not None and stat.S_ISLNK(mode):
            raise OutputError(f"{path}: is a symbolic link; clipsam does not write through links here (remove it)"
                              ) from None
        if mode is not None and not stat.S_ISREG(mode):
            raise OutputError(f"{path}: is not a regular file; clipsam does not write to it (remove it)") from None
        raise
    st = os.fstat(fd)
    problem = ""
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif hasattr(os, "getuid") and st.st_uid != os.getuid():
        problem = f"belongs to another user (uid {st.st_uid})"
    if problem:
        os.close(fd)
        raise OutputError(f"{path}: {problem}; clipsam does not write to it (remove it)")
    return fd


def read_capped(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most *limit* bytes. FIFOs, devices and folders are refused before any
    read (a FIFO would block, ``/dev/zero`` never ends).

    Raises:
        ClipsamError: not a regular file, or larger than *limit*.
    """
    fd = os.open(path, os.O_RDONLY | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ClipsamError(f"{path}: not a regular file; a {what} must be a plain file")
        if st.st_size > limit:
            raise ClipsamError(f"{path}: {st.st_size:,} bytes is over the {limit:,}-byte limit for a {what}")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise ClipsamError(f"{path}: grew past the {limit:,}-byte limit for a {what} while being read")
        return data
    finally:
        os.close(fd)


def read_text_capped(path: str | os.PathLike, what: str = "file", limit: int = MAX_DATA_BYTES) -> str:
    """The UTF-8 text of a regular file of at most *limit* bytes (see :func:`read_capped`).

    Raises:
        ClipsamError: not a regular file, too large, or not UTF-8 text.
    """
    data = read_capped(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClipsamError(f"{path}: not UTF-8 text (byte {exc.start}); a {what} must be UTF-8") from None


def check_regular(path: str | os.PathLike, what: str = "file", limit: int | None = None) -> os.stat_result:
    """``os.stat`` of *path* after checking it is a regular file (links followed) of at most *limit* bytes, so that
    a FIFO, a device or a folder is refused before anything opens it.

    Raises:
        ClipsamError: not a regular file, or too large. OSError: missing or unreadable.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise ClipsamError(f"{path}: is {kind}, not a {what}" if kind.startswith("a ") else f"{path}: {kind}")
    if limit is not None and st.st_size > limit:
        raise ClipsamError(f"{path}: {st.st_size:,} bytes is over the {limit:,}-byte limit for a {what}")
    return st


_JSON_MARK = re.compile(rb'^\s*\{\s*("clipsam_version"\s*:|"info"\s*:\s*\{[^{}]*"contributor"\s*:\s*"clipsam")')
_HTML_MARK = re.compile(rb'<meta name="generator" content="clipsam[ "]')


def written_by_clipsam(path: str | os.PathLike) -> bool:
    """Whether the file at *path* carries the marker clipsam writes into its outputs: the ``clipsam_version`` key or
    COCO ``info.contributor`` of its JSON, the generator tag of its HTML, or the ``Software`` tag of its overlays
    (PNG text chunk, EXIF in JPEG / WebP / TIFF). A link, a folder or anything else is not clipsam's."""
    p = Path(path)
    try:
        if p.is_symlink() or not p.is_file():
            return False
        with open(p, "rb") as fh:
            head = fh.read(MARKER_BYTES)
    except OSError:
        return False
    suffix = p.suffix.lower()
    if suffix == ".json":
        return bool(_JSON_MARK.match(head))
    if suffix in (".html", ".htm"):
        return bool(_HTML_MARK.search(head[:4096]))
    return _image_software(p).startswith(SOFTWARE)


def marked_image_bytes(picture: Any, suffix: str) -> bytes:
    """*picture* (a ``PIL.Image``) encoded in the format of the file ending *suffix* (``.png``, ``.jpg`` …), with
    ``Software: clipsam <version>`` in its PNG text or EXIF, the marker :func:`written_by_clipsam` reads (BMP has no
    place for it).

    Raises:
        OutputError: an ending Pillow cannot write.
    """
    import io

    from PIL import Image, PngImagePlugin

    from ._version import __version__

    fmt = Image.registered_extensions().get(suffix.lower())
    if fmt is None:
        raise OutputError(f"unknown image file ending {suffix!r}; use .png or .jpg")
    tag = f"{SOFTWARE} {__version__}"
    kwargs: dict[str, Any] = {}
    if fmt == "PNG":
        kwargs["pnginfo"] = PngImagePlugin.PngInfo()
        kwargs["pnginfo"].add_text("Software", tag)
    elif fmt in ("JPEG", "WEBP", "TIFF"):
        exif = Image.Exif()
        exif[0x0131] = tag
        kwargs["exif"] = exif
    buf = io.BytesIO()
    picture.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _image_software(path: Path) -> str:
    try:
        from PIL import Image

        with Image.open(path) as im:
            text = im.info.get("Software") or im.getexif().get(0x0131) or ""
    except Exception:  # not an image Pillow reads: not one of clipsam's overlays
        return ""
    return str(text)


def check_outputs(outputs: Iterable[tuple[str, Path | None]], inputs: Iterable[str | os.PathLike], *,
                  overwrite: bool = False) -> None:
    """Refuse, before any work, outputs that would change the user's files.

    Args:
        outputs: ``(option name, path)`` pairs (``None`` paths are skipped).
        inputs: the files the command reads.
        overwrite: allow replacing existing files that clipsam did not write (never an input).

    Raises:
        OutputError: an output is an input (after links), two outputs are one file, or an output exists and was not
            written by clipsam (without *overwrite*).
    """
    ins = [Path(i) for i in inputs]
    seen: list[tuple[str, Path]] = []
    for option, path in outputs:
        if path is None:
            continue
        for src in ins:
            if same_file(path, src):  # links and hard links followed; a new file is no input
                raise OutputError(f"{option} {path}: is the input {src}; clipsam never writes over its inputs "
                                  "(choose another file name)")
        for other, prev in seen:
            if os.path.realpath(path) == os.path.realpath(prev):
                raise OutputError(f"{option} {path}: is also given to {other}; give each output its own file")
        seen.append((option, path))
        if (path.exists() or path.is_symlink()) and not overwrite and not written_by_clipsam(path):
            raise OutputError(f"{option} {path}: exists and was not written by clipsam; choose another file name, "
                              "or pass --overwrite to replace it")
