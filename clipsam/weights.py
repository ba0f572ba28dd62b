"""Pretrained checkpoints: a registry with pinned SHA-256, a cache, verified downloads and offline import.

The flow for every checkpoint is the same: bytes arrive (download or ``import``) into a temporary file in
the cache folder, their SHA-256 is checked against the registry *before anything is unpickled*, the file is
then opened with ``torch.load(..., weights_only=True)`` (which refuses code payloads), and only then is it
renamed into place atomically. A failure at any step removes the temporary file, so the cache only ever
holds verified checkpoints.

The cache folder is ``$CLIPSAM_HOME/weights`` (default ``~/.cache/clipsam/weights``). With
``CLIPSAM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` clipsam never touches the network.

Where the publisher gives no hash (SAM 3 on Hugging Face), the entry's ``sha256`` is empty and clipsam trusts the
first verified-loadable copy it downloads or imports: its SHA-256 is recorded in ``$CLIPSAM_HOME/weights/pins.json``
and every later use, download and ``verify`` is checked against that pin (trust on first use; the README says so).
``safetensors`` checkpoints are read with the safetensors library, which has no code path at all.

OpenAI's CLIP checkpoints are TorchScript archives, which ``torch.load(weights_only=True)`` cannot open; they
are verified against the SHA-256 that OpenAI publishes in their URL and read with ``torch.jit.load``
(TorchScript's own deserialiser, which does not run Python pickle code), and only their state dict is used.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import secrets
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ChecksumError, ClipsamError, UnsafeCheckpointError, WeightsError, WeightsMissingError
from .files import atomic_write, open_owned

log = logging.getLogger(__name__)

#: ``progress(bytes_done, bytes_total_or_None)``, called as a download advances.
ProgressCallback = Callable[[int, "int | None"], None]

_CHUNK = 1 << 20
_TRUTHY = {"1", "true", "yes", "on"}

#: Seconds a download may wait for the next bytes before it is abandoned (per read).
READ_TIMEOUT = 60.0
#: Average bytes per second a download must keep up after :data:`RATE_GRACE` seconds, or it is abandoned: a
#: server that drips a byte at a time never trips a per-read timeout.
MIN_RATE = 20_000
RATE_GRACE = 30.0
#: Bytes accepted from a server for a checkpoint of unknown size (its registry entry gives none, nor does the
#: server): an endless body must not fill the disk.
MAX_UNKNOWN_BYTES = 16_000_000_000


@dataclass(frozen=True)
class Checkpoint:
    """One downloadable checkpoint.

    Attributes:
        name: registry name used everywhere (``vit_b``, ``ViT-B-16/openai``).
        family: ``sam`` or ``clip``.
        arch: architecture key: a ``segment_anything`` registry key or an open_clip model name.
        url: official download address.
        sha256: pinned SHA-256 of the file (64 hex digits), or ``""`` when none is published: the first verified
            copy's hash is then recorded and pinned locally (:func:`expected_sha256`).
        filename: name of the file in the cache.
        format: ``torch`` (a pickled state dict, read with ``weights_only=True``), ``torchscript`` or
            ``safetensors``.
        size: the file's size in bytes. A download stops as soon as a server sends more, and a Content-Length that
            disagrees is refused before anything is written; ``None`` only for entries whose size is unknown.
        license: licence of the weights.
        description: one line for ``clipsam weights list``.
    """

    name: str
    family: str
    arch: str
    url: str
    sha256: str
    filename: str
    format: str = "torch"
    size: int | None = None
    license: str = ""
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def _sam(name: str, url: str, sha256: str, size: int | None, description: str) -> Checkpoint:
    return Checkpoint(name=name, family="sam", arch=name, url=url, sha256=sha256, filename=url.rsplit("/", 1)[1],
                      size=size, license="Apache-2.0", description=description)


def _openai_clip(arch: str, sha256: str, size: int, description: str, file: str | None = None) -> Checkpoint:
    # OpenAI publishes the file's SHA-256 as a path component of the URL.
    url = f"https://openaipublic.azureedge.net/clip/models/{sha256}/{file or arch}.pt"
    return Checkpoint(name=f"{arch}/openai", family="clip", arch=arch, url=url, sha256=sha256,
                      filename=f"clip_{arch}_openai_{sha256[:8]}.pt", format="torchscript", size=size, license="MIT",
                      description=description, extra={"quick_gelu": True})


def _sam2(name: str, arch: str, sha256: str, size: int, description: str) -> Checkpoint:
    url = f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
    return Checkpoint(name=name, family="sam", arch=arch, url=url, sha256=sha256, filename=f"{name}.pt", size=size,
                      license="Apache-2.0", description=description, extra={"backend": "sam2"})


_FB = "https://dl.fbaipublicfiles.com/segment_anything"
_BUILTIN = [
    _sam("vit_b", f"{_FB}/sam_vit_b_01ec64.pth",
         "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383,
         "SAM ViT-B (91M params, ~375 MB): the default; fastest"),
    _sam("vit_l", f"{_FB}/sam_vit_l_0b3195.pth",
         "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607,
         "SAM ViT-L (308M params, ~1.2 GB)"),
    _sam("vit_h", f"{_FB}/sam_vit_h_4b8939.pth",
         "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879,
         "SAM ViT-H (636M params, ~2.6 GB): best masks, slowest"),
    # SAM 2.1 (Meta, 2024-09-28 release). The SHA-256 values are the Git LFS ids of these files as mirrored on
    # Hugging Face, where independent uploads of each file agree; `clipsam weights verify` re-checks a download.
    _sam2("sam2.1_hiera_tiny", "sam2.1_hiera_t", "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
          156_008_466, "SAM 2.1 Hiera-T (39M params, 156 MB): fastest SAM 2.1"),
    _sam2("sam2.1_hiera_small", "sam2.1_hiera_s", "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
          184_416_285, "SAM 2.1 Hiera-S (46M params, 184 MB)"),
    _sam2("sam2.1_hiera_base_plus", "sam2.1_hiera_b+",
          "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", 323_606_802,
          "SAM 2.1 Hiera-B+ (81M params, 324 MB)"),
    _sam2("sam2.1_hiera_large", "sam2.1_hiera_l", "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
          898_083_611, "SAM 2.1 Hiera-L (224M params, 898 MB): best SAM 2.1 masks"),
    # SAM 3 (Meta, 2025-11), Hugging Face transformers format. Meta publishes no SHA-256 for it: the first verified
    # copy is pinned locally (see the module docstring). Gated: accept the licence on Hugging Face, set HF_TOKEN.
    Checkpoint(name="sam3", family="sam", arch="sam3", url="https://huggingface.co/facebook/sam3/resolve/main/"
               "model.safetensors", sha256="", filename="sam3_model.safetensors", format="safetensors",
               license="SAM License (Meta)", description="SAM 3 (~848M params, ~3.4 GB): every instance of a text "
               "concept; needs clipsam[sam3]; a GPU is advised", extra={"backend": "sam3", "hf_repo": "facebook/sam3"}),
    _openai_clip("ViT-B-16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", 350_837_078,
                 "OpenAI CLIP ViT-B/16 (~351 MB): the default"),
    _openai_clip("ViT-B-32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", 353_976_522,
                 "OpenAI CLIP ViT-B/32 (~354 MB): fastest"),
    _openai_clip("ViT-L-14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", 932_768_134,
                 "OpenAI CLIP ViT-L/14 (~933 MB): most accurate"),
    _openai_clip("ViT-L-14-336", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", 934_088_680,
                 "OpenAI CLIP ViT-L/14 at 336 px (~934 MB)", file="ViT-L-14-336px"),
]

#: Every known checkpoint by name. Add your own with :func:`register`.
REGISTRY: dict[str, Checkpoint] = {c.name: c for c in _BUILTIN}
_ALIASES = {"sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h", "default": "vit_h"}


def register(checkpoint: Checkpoint, *, replace: bool = False) -> None:
    """Add a checkpoint to the registry (a mirror, a fine-tuned model with a known hash, a test file)."""
    if checkpoint.name in REGISTRY and not replace:
        raise WeightsError(f"checkpoint {checkpoint.name!r} is already registered; pass replace=True to override")
    if checkpoint.sha256 and (len(checkpoint.sha256) != 64
                              or any(c not in "0123456789abcdef" for c in checkpoint.sha256)):
        raise WeightsError(f"checkpoint {checkpoint.name!r}: sha256 must be 64 lowercase hex digits (or empty: "
                           "pinned on first use)")
    REGISTRY[checkpoint.name] = checkpoint


def get(name: str) -> Checkpoint:
    """The registry entry for *name* (aliases such as ``sam_vit_b`` accepted)."""
    key = _ALIASES.get(name, name)
    try:
        return REGISTRY[key]
    except KeyError:
        raise WeightsError(
            f"unknown checkpoint {name!r}; known: {', '.join(sorted(REGISTRY))} (see `clipsam weights list`)"
        ) from None


def home() -> Path:
    """clipsam's data folder: ``$CLIPSAM_HOME`` or ``~/.cache/clipsam``."""
    env = os.environ.get("CLIPSAM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clipsam"


def cache_dir() -> Path:
    """Where checkpoints live: ``home() / "weights"``."""
    return home() / "weights"


def is_offline() -> bool:
    """True when ``CLIPSAM_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("CLIPSAM_OFFLINE", "HF_HUB_OFFLINE"))


def _pins_path() -> Path:
    return cache_dir() / "pins.json"


def _pins() -> dict[str, str]:
    """The hashes pinned on first use. A missing file is no pins; a corrupt one is an error, never a reset (a reset
    would trust whatever copy comes next)."""
    path = _pins_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: the pinned checkpoint hashes cannot be read ({exc}); restore the file, or delete "
                           "it to trust the next verified copy of each unpinned checkpoint again") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) and len(v) == 64 for v in data.values()):
        raise WeightsError(f"{path}: not a file of pinned checkpoint hashes ({{name: 64 hex digits}}); restore it, or "
                           "delete it to trust the next verified copy of each unpinned checkpoint again")
    return {str(k): v for k, v in data.items()}


def expected_sha256(ckpt: Checkpoint) -> str | None:
    """The SHA-256 a copy of *ckpt* must have: the registry's, else the one pinned on first use, else ``None``
    (nothing verified yet: the next verified copy is pinned)."""
    return ckpt.sha256 or _pins().get(ckpt.name)


def _pin(ckpt: Checkpoint, sha256: str) -> None:
    """Record the first verified copy's hash of an entry without a published one (atomically)."""
    if ckpt.sha256:
        return
    pins = _pins()
    if pins.get(ckpt.name) == sha256:
        return
    pins[ckpt.name] = sha256
    path = _pins_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(pins, indent=2, sort_keys=True).encode("utf-8"))
    log.warning("%s has no published SHA-256: pinned this copy's %s (in %s)", ckpt.name, sha256, path)


def path_for(name: str) -> Path:
    """Where checkpoint *name* is (or would be) cached."""
    return cache_dir() / get(name).filename


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp_key() -> bytes | None:
    """This user's secret for signing verification stamps (``$CLIPSAM_HOME/weights/.stamp-key``, mode 0600, made on
    first use). ``None`` when it cannot be trusted (a link, another owner, readable by others): then every use
    hashes the checkpoint again."""
    path = cache_dir() / ".stamp-key"
    try:
        fd = open_owned(path, os.O_RDONLY)
    except FileNotFoundError:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError:
            return None
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key
    except (OSError, ClipsamError):  # a link, a folder, another owner: not trusted
        return None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        key = fh.read(64)
    return key if len(key) == 32 and not mode & 0o077 else None


def _stamp_fields(st: os.stat_result, sha256: str) -> dict[str, Any]:
    # ctime changes with every write, rename or utime, so a same-size copy with its mtime restored does not match
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "device": st.st_dev}


def _sign(fields: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, json.dumps(fields, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _write_stamp(path: Path, sha256: str) -> None:
    """Record that *path* was hashed and matched, signed with this user's key (no key: no stamp)."""
    key = _stamp_key()
    if key is None:
        return
    fields = _stamp_fields(path.stat(), sha256)
    atomic_write(_stamp_path(path), json.dumps({**fields, "signature": _sign(fields, key)}).encode())


def _stamp_ok(path: Path, sha256: str) -> bool:
    """Hashing can be skipped: a stamp signed with this user's key (:func:`_stamp_key`) says the file was verified
    and it has not changed since: same size, mtime, ctime, inode and device. A forged or copied stamp, a stamp
    of another file and any change to the file fail, and the file is hashed again."""
    key = _stamp_key()
    if key is None:
        return False
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        st = path.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict):
        return False
    fields = _stamp_fields(st, sha256)
    return {k: stamp.get(k) for k in fields} == fields and hmac.compare_digest(
        str(stamp.get("signature", "")), _sign(fields, key))


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a regular file, streamed (a FIFO or device is refused: it would never end)."""
    from .files import check_regular

    check_regular(path, "checkpoint file")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_cached(name: str) -> bool:
    """The checkpoint file exists in the cache (not re-hashed; see :func:`verify`)."""
    return path_for(name).is_file()


def _missing_message(ckpt: Checkpoint, reason: str) -> str:
    size = f", {ckpt.size / 1e6:,.0f} MB" if ckpt.size else ""
    return (
        f"{ckpt.family.upper()} checkpoint {ckpt.name!r} ({ckpt.filename}{size}) is not in the cache "
        f"{cache_dir()} and {reason}. On a machine with internet access download {ckpt.url} and copy it here, "
        f"then run `clipsam weights import {ckpt.name} /path/to/{ckpt.url.rsplit('/', 1)[1]}` (its SHA-256 is "
        "checked), or run `clipsam weights download "
        f"{ckpt.name}` once online; CLIPSAM_HOME chooses the cache folder."
    )


def missing_message(names: list[str], reason: str, verb: str | None = None) -> str:
    """One message for every checkpoint of *names* that is not cached: each file, its size and address, and the
    import command of each, so that one trip to a machine with internet access brings them all."""
    ckpts = [get(n) for n in dict.fromkeys(names)]
    if len(ckpts) == 1:
        return _missing_message(ckpts[0], reason)
    files = "; ".join(f"{c.name!r}: {c.url}" + (f" ({c.size / 1e6:,.0f} MB)" if c.size else "") for c in ckpts)
    imports = " and ".join(f"`clipsam weights import {c.name} /path/to/{c.url.rsplit('/', 1)[1]}`" for c in ckpts)
    online = f"`clipsam weights download --for {verb}`" if verb else \
        f"`clipsam weights download {' '.join(c.name for c in ckpts)}`"
    return (f"{len(ckpts)} checkpoints this command needs are not in the cache {cache_dir()} and {reason}. On a "
            f"machine with internet access download {files}; copy them here, then run {imports} (each SHA-256 is "
            f"checked), or run {online} once online; CLIPSAM_HOME chooses the cache folder.")


def ensure_all(names: list[str], *, verb: str | None = None, progress: Callable[[str], ProgressCallback | None] |
               None = None) -> list[Path]:
    """:func:`ensure` for each of *names*; offline, every missing one is named in one :class:`WeightsMissingError`
    (with the import command of each) before anything else happens."""
    names = list(dict.fromkeys(get(n).name for n in names))
    missing = [n for n in names if not is_cached(n)]
    if missing and is_offline():
        raise WeightsMissingError(missing_message(missing, "offline mode is on (CLIPSAM_OFFLINE / HF_HUB_OFFLINE)",
                                                  verb))
    return [ensure(n, progress=progress(n) if progress else None) for n in names]


def ensure(name: str, *, download: bool = True, progress: ProgressCallback | None = None) -> Path:
    """Path of a verified copy of checkpoint *name*, downloading it first when needed and allowed.

    A cached file that was verified before and has not changed is not hashed again.

    Raises:
        WeightsMissingError: not cached, and offline / *download* is false / the download failed.
        ChecksumError: a cached or downloaded file does not match the pinned SHA-256.
    """
    ckpt = get(name)
    path = cache_dir() / ckpt.filename
    if path.is_file():
        expected = expected_sha256(ckpt)
        if expected and _stamp_ok(path, expected):
            return path
        actual = sha256_file(path)
        if expected is None:  # a copy placed by hand into the cache, no published hash: check it opens, pin it
            _check_loadable(path, ckpt, source=str(path))
            _pin(ckpt, actual)
        elif actual != expected:
            raise ChecksumError(
                f"cached checkpoint {path} has SHA-256 {actual[:12]}… but {ckpt.name!r} must have "
                f"{expected[:12]}…; delete it and run `clipsam weights download {ckpt.name}`"
            )
        _write_stamp(path, actual)
        return path
    if not download:
        raise WeightsMissingError(_missing_message(ckpt, "automatic download is switched off"))
    if is_offline():
        raise WeightsMissingError(_missing_message(ckpt, "offline mode is on (CLIPSAM_OFFLINE / HF_HUB_OFFLINE)"))
    return fetch(name, progress=progress)


def fetch(name: str, *, progress: ProgressCallback | None = None, timeout: float = READ_TIMEOUT,
          deadline: float | None = None, min_rate: float = MIN_RATE, rate_grace: float = RATE_GRACE) -> Path:
    """Download checkpoint *name* into the cache (even when already cached), verified; returns its path.

    Args:
        timeout: seconds to wait for each read.
        deadline: seconds the whole download may take (default: what *min_rate* allows for the file, plus a
            minute).
        min_rate: bytes per second the download must average once *rate_grace* seconds have passed.
    """
    ckpt = get(name)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ckpt.filename
    part = folder / f".{ckpt.filename}.{os.getpid()}.part"
    log.info("downloading %s from %s", ckpt.name, ckpt.url)
    try:
        try:
            _stream(ckpt, part, progress, timeout, deadline, min_rate, rate_grace)
        except http.client.HTTPException as exc:  # the connection closed before Content-Length bytes came
            raise WeightsError(
                f"download of {ckpt.name} from {ckpt.url} stopped early ({type(exc).__name__}); nothing was saved, "
                "run the command again"
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else (
                getattr(exc, "reason", None) or exc)
            if isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403) and ckpt.extra.get("hf_repo"):
                repo = ckpt.extra["hf_repo"]
                reason += (f"; {repo} is a gated Hugging Face repository: accept its licence at "
                           f"https://huggingface.co/{repo} and set HF_TOKEN to a token of that account")
            reason = f"the download from {ckpt.url} failed ({reason})"
            raise WeightsMissingError(_missing_message(ckpt, reason)) from exc
        actual = _check_sha256(part, ckpt, source=ckpt.url)
        _check_loadable(part, ckpt, source=ckpt.url)
        os.replace(part, target)
        _pin(ckpt, actual)
        _write_stamp(target, actual)
    finally:
        part.unlink(missing_ok=True)
    log.info("saved %s to %s", ckpt.name, target)
    return target


def _stream(ckpt: Checkpoint, part: Path, progress: ProgressCallback | None, timeout: float,
            deadline: float | None, min_rate: float, rate_grace: float) -> None:
    headers = {"User-Agent": "clipsam"}
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token and ckpt.extra.get("hf_repo"):  # gated Hugging Face repositories need the user's token
        headers["Authorization"] = f"Bearer {token.strip()}"
    request = urllib.request.Request(ckpt.url, headers=headers)
    start = time.monotonic()
    with _opener().open(request, timeout=timeout) as response:
        ctype = (response.headers.get("Content-Type") or "").lower()
        if ctype.startswith("text/html"):
            raise WeightsError(
                f"{ckpt.url} returned an HTML page instead of the checkpoint (a login, error or captive-portal "
                f"page?); nothing was saved. Check the address or download it by hand and use "
                f"`clipsam weights import {ckpt.name} FILE`"
            )
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.strip().isdigit() else None
        if length is not None and ckpt.size is not None and length != ckpt.size:
            raise WeightsError(
                f"{ckpt.url} announces {length:,} bytes but {ckpt.name!r} is {ckpt.size:,} bytes: not the right file "
                "(a changed or proxied address?); nothing was saved"
            )
        expected = ckpt.size if ckpt.size is not None else length
        limit = expected if expected is not None else MAX_UNKNOWN_BYTES
        if deadline is None:
            deadline = 60.0 + (expected if expected is not None else limit) / max(min_rate, 1.0)
        done = 0
        with open(part, "wb") as out:
            while True:
                chunk = response.read1(_CHUNK)  # returns what has arrived: slow senders are checked as they drip
                if not chunk:
                    break
                if done == 0 and chunk.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
                    raise WeightsError(
                        f"{ckpt.url} returned an HTML page instead of the checkpoint; nothing was saved"
                    )
                done += len(chunk)
                if done > limit:
                    raise WeightsError(
                        f"{ckpt.url} sent more than the {limit:,} bytes {ckpt.name!r} should have; stopped, nothing "
                        "was saved"
                    )
                out.write(chunk)
                if progress is not None:
                    progress(done, expected)
                elapsed = time.monotonic() - start
                if elapsed > deadline:
                    raise WeightsError(
                        f"download of {ckpt.name} from {ckpt.url} took longer than {deadline:.0f} s "
                        f"({done:,} bytes so far); nothing was saved, try again on a better connection or use "
                        f"`clipsam weights import {ckpt.name} FILE`"
                    )
                if elapsed > rate_grace and done / elapsed < min_rate:
                    raise WeightsError(
                        f"download of {ckpt.name} from {ckpt.url} is too slow ({done / elapsed / 1000:.1f} kB/s, "
                        f"under {min_rate / 1000:.0f} kB/s); nothing was saved, try again later or use "
                        f"`clipsam weights import {ckpt.name} FILE`"
                    )
        if expected is not None and done != expected:
            raise WeightsError(
                f"download of {ckpt.name} from {ckpt.url} stopped early: got {done:,} of {expected:,} bytes; "
                "nothing was saved, run the command again"
            )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


class _CredentialSafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but send credentials only to the origin they were given for: urllib copies every header,
    ``Authorization`` included, onto a redirect, so a 302 from the model host to any other host would receive the
    user's token. Like ``requests`` and ``huggingface_hub``, drop it when scheme, host or port change (Hugging Face's
    CDN links are signed and need no token)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in ("Authorization", "Cookie", "Proxy-Authorization"):
                new.headers.pop(name, None)
                new.headers.pop(name.capitalize(), None)
                new.unredirected_hdrs.pop(name.capitalize(), None)
            log.info("redirected to another host (%s): credentials not forwarded", _origin(newurl)[1])
        return new


def _opener() -> urllib.request.OpenerDirector:
    """urllib's default opener (proxies from the environment included) with :class:`_CredentialSafeRedirects`."""
    return urllib.request.build_opener(_CredentialSafeRedirects)


def _check_sha256(path: Path, ckpt: Checkpoint, source: str) -> str:
    """The file's SHA-256, after checking it against the expected one (none yet: anything goes, to be pinned)."""
    actual = sha256_file(path)
    expected = expected_sha256(ckpt)
    if expected is not None and actual != expected:
        pinned = "" if ckpt.sha256 else " (pinned on first use: delete pins.json in the cache to trust another copy)"
        raise ChecksumError(
            f"{source}: SHA-256 mismatch for {ckpt.name!r}: expected {expected}{pinned}, got {actual} "
            f"({path.stat().st_size:,} bytes); the file is corrupt, truncated or not {ckpt.filename}, "
            "and it was not saved"
        )
    return actual


def _check_loadable(path: Path, ckpt: Checkpoint, source: str) -> None:
    """Open the verified file the way it will be loaded, so that a bad one never enters the cache."""
    if ckpt.format == "torchscript" and not zipfile.is_zipfile(path):
        raise WeightsError(f"{source}: {ckpt.name!r} should be a TorchScript archive but is not a zip file")
    load_state_dict(path, ckpt, mmap=True)  # TorchScript too: a corrupt archive must not enter the cache


def load_state_dict(path: str | os.PathLike, checkpoint: Checkpoint | str, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint file into a ``{name: tensor}`` state dict, refusing anything but tensors.

    ``torch`` checkpoints go through ``torch.load(weights_only=True)``; a file that carries other objects
    (a code payload, custom classes) raises :class:`UnsafeCheckpointError`.
    """
    import pickle

    import torch

    ckpt = get(checkpoint) if isinstance(checkpoint, str) else checkpoint
    path = Path(path)
    if ckpt.format == "safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError as exc:
            raise WeightsError(f"{ckpt.name!r} is a safetensors checkpoint: pip install safetensors") from exc
        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors checkpoint for {ckpt.name!r} ({exc})") from exc
    if ckpt.format == "torchscript":
        try:
            state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except (RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{path}: not a readable TorchScript checkpoint for {ckpt.name!r} ({first})") from exc
        if not state or not all(torch.is_tensor(v) for v in state.values()):
            raise WeightsError(f"{path}: TorchScript checkpoint for {ckpt.name!r} holds no tensors")
        return state
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise UnsafeCheckpointError(
            f"{path}: refused to load {ckpt.name!r}: the file holds objects other than tensors, such as code to "
            f"run on loading ({detail.strip()[:160]}); it was not used"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint for {ckpt.name!r} ({exc})") from exc
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # SAM 2 style {"model": state_dict}
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise WeightsError(f"{path}: {ckpt.name!r} should hold a state dict of tensors, found {type(state).__name__}")
    return dict(state)


def import_file(name: str, source: str | os.PathLike, *, copy: bool = True) -> Path:
    """Copy a checkpoint the user already has into the cache, verifying its SHA-256 first.

    Use this on machines without internet access: ``clipsam weights import vit_b sam_vit_b_01ec64.pth``.
    """
    ckpt = get(name)
    source = Path(source).expanduser()
    if not source.is_file():
        raise WeightsMissingError(f"{source}: no such file to import as {ckpt.name!r}")
    actual = _check_sha256(source, ckpt, source=str(source))
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ckpt.filename
    part = folder / f".{ckpt.filename}.{os.getpid()}.part"
    try:
        if copy:
            shutil.copyfile(source, part)
        else:
            os.link(source, part)
        _check_loadable(part, ckpt, source=str(source))
        os.replace(part, target)
        _pin(ckpt, actual)
        _write_stamp(target, actual)
    finally:
        part.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify` for one checkpoint."""

    name: str
    path: Path
    status: str  # "ok", "missing" or "mismatch"
    sha256: str | None = None


def verify(names: list[str] | None = None) -> Iterator[VerifyResult]:
    """Re-hash cached checkpoints (all registered ones by default) and report each."""
    for name in names or sorted(REGISTRY):
        ckpt = get(name)
        path = cache_dir() / ckpt.filename
        if not path.is_file():
            yield VerifyResult(ckpt.name, path, "missing")
            continue
        actual = sha256_file(path)
        expected = expected_sha256(ckpt)
        if expected is None:
            _pin(ckpt, actual)
        if expected is None or actual == expected:
            _write_stamp(path, actual)
            yield VerifyResult(ckpt.name, path, "ok", actual)
        else:
            yield VerifyResult(ckpt.name, path, "mismatch", actual)
