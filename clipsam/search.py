"""Region search: every region of an image collection in an embedded LanceDB table, found by text or example.

One row per region: the unit CLIP embedding of its masked crop, the image's path and content hash, box, RLE,
area, label path, label score and parent id. Indexing is incremental (images already indexed, by content hash,
are skipped) and safe to interrupt: an image's rows are committed before the image is marked done, and a rerun
first removes any rows of an image that was not marked done.

Below :data:`ANN_THRESHOLD` rows search is exact; past it an IVF-PQ index is built (and rebuilt when the table
has doubled), searched with :data:`ANN_SEARCH` and re-ranked on the exact vectors.

The database is a folder; LanceDB also opens object-store URIs (``s3://bucket/regions``, ``gs://…``, ``az://…``)
with credentials from the environment, so one index can be shared by many machines.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .core import masks as M
from .core.crops import crop_region
from .core.image import load_image, printable
from .errors import ClipsamError, ImageError
from .failures import FailureGuard, SystematicFailure
from .lock import FolderLock

log = logging.getLogger(__name__)

#: Rows from which an ANN index is built (exact search below).
ANN_THRESHOLD = 100_000
#: Finished images are written together: one append per this many images, or per :data:`FLUSH_SECONDS`, whichever
#: comes first (a kill loses at most that much work, and the table does not grow a fragment per image).
FLUSH_IMAGES = 64
FLUSH_SECONDS = 30.0
#: The tables are compacted and old versions removed after this many appends, then after twice as many, and so on up
#: to every :data:`COMPACT_MAX_EVERY` appends (and at the end of a run): a compaction rewrites the fragments under
#: LanceDB's target size, the growing table included, so a fixed interval would rewrite it over and over.
COMPACT_EVERY = 16
COMPACT_MAX_EVERY = 256
#: Versions younger than this survive a compaction, so that a search running meanwhile never loses its version.
KEEP_VERSIONS_SECONDS = 60.0
#: Query settings of the ANN index: IVF partitions probed, and candidates re-ranked exactly (x k).
ANN_SEARCH = {"nprobes": 24, "refine_factor": 20}

__all__ = ["ANN_SEARCH", "ANN_THRESHOLD", "RegionIndex", "SearchHit", "build_ann_index", "check_where"]


def _require_lancedb():
    # LanceDB's Rust core logs a WARN line on stderr when it creates a table ("No existing dataset …"): clipsam says
    # what happens itself, so only its errors are shown unless the user set LANCEDB_LOG
    os.environ.setdefault("LANCEDB_LOG", "error")
    try:
        import lancedb
        import pyarrow as pa
    except ImportError as exc:
        raise ClipsamError("region search needs LanceDB: pip install 'clipsam[search]'") from exc
    return lancedb, pa


def build_ann_index(table: Any, rows: int, dim: int) -> None:
    """Build (or replace) the IVF-PQ cosine index of a region table: ~sqrt(rows) partitions, 8-dim sub-vectors."""
    partitions = max(1, int(math.sqrt(rows)))
    sub_vectors = next(d for d in (dim // 8, dim // 4, dim // 2, 1) if d >= 1 and dim % d == 0)
    from lancedb.index import IvfPq

    table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=partitions,
                                              num_sub_vectors=sub_vectors), replace=True)


@dataclass(frozen=True)
class SearchHit:
    """One region found by :meth:`RegionIndex.search`, most similar first.

    Attributes:
        similarity: cosine similarity between the query and the region's crop embedding.
        image_path / image_hash: where the region lives (SHA-256 of the file's bytes).
        region_id, parent_id: ids within that image's segmentation.
        bbox_xywh, area, rle: the region, at the image's original resolution.
        label, label_path, score, kind: its label as indexed.
    """

    similarity: float
    image_path: str
    image_hash: str
    region_id: int
    parent_id: int | None
    bbox_xywh: tuple[float, float, float, float]
    area: int
    rle: M.RLE
    label: str | None
    label_path: tuple[str, ...]
    score: float
    kind: str

    def mask(self) -> np.ndarray:
        return M.decode(self.rle)

    def file_status(self) -> str:
        """``ok``, ``missing`` (nothing readable at ``image_path`` any more) or ``changed`` (the file's content is
        not what was indexed: its regions no longer fit it). ``clipsam index`` of the new location or content
        brings the rows up to date."""
        try:
            return "ok" if file_hash(self.image_path) == self.image_hash else "changed"
        except (OSError, ClipsamError):
            return "missing"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["label_path"] = list(self.label_path)
        d["bbox_xywh"] = list(self.bbox_xywh)
        return d


def file_hash(path: str | Path) -> str:
    """SHA-256 of an image file's bytes; a FIFO, a device or a file over :data:`~clipsam.files.MAX_IMAGE_BYTES` is
    refused before it is opened (``/dev/zero`` in a list file must not hang the run)."""
    from .files import MAX_IMAGE_BYTES, check_regular

    check_regular(path, "image file", MAX_IMAGE_BYTES)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _store_path(path: str) -> str:
    """A path as a UTF-8 column value. A file name that is not valid UTF-8 is kept exactly, as ``"\\0"`` + the
    base64 of its bytes (no real path holds a NUL byte, so the marker is unambiguous)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "\0" + base64.b64encode(os.fsencode(path)).decode("ascii")


def _load_path(value: str) -> str:
    """The inverse of :func:`_store_path`."""
    if value.startswith("\0"):
        return os.fsdecode(base64.b64decode(value[1:]))
    return value


def check_where(where: str) -> str:
    """*where* itself, after checking that it is one self-contained SQL condition: parentheses balanced outside
    quotes, no ``;`` and no comments, so that it cannot close the parenthesis it is put in and undo the other
    filters (``1=1) OR (1=1``). It is still raw SQL over the table's columns; pass only trusted text."""
    depth, quote, i = 0, "", 0
    while i < len(where):
        c = where[i]
        if quote:
            if c == quote:
                if where[i + 1:i + 2] == quote:  # an escaped quote ('' or "")
                    i += 1
                else:
                    quote = ""
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise ClipsamError(f"where filter {where!r}: closes a parenthesis it did not open")
        elif c == ";" or where[i:i + 2] in ("--", "/*"):
            raise ClipsamError(f"where filter {where!r}: ';' and SQL comments are not allowed")
        i += 1
    if quote:
        raise ClipsamError(f"where filter {where!r}: unterminated {quote} quote")
    if depth:
        raise ClipsamError(f"where filter {where!r}: {depth} unclosed parenthesis(es)")
    return where


def _report(cb: Callable[[dict[str, Any]], None] | None, path: str, status: str, reason: str = "",
            regions: int = 0) -> None:
    if cb is not None:
        cb({"path": path, "status": status, "reason": reason, "regions": regions})

def _schema(dim: int) -> Any:
    _, pa = _require_lancedb()
    return pa.schema([
        ("vector", pa.list_(pa.float32(), dim)), ("image_path", pa.string()), ("image_hash", pa.string()),
        ("region_id", pa.int64()), ("parent_id", pa.int64()), ("bbox", pa.list_(pa.float64(), 4)),
        ("height", pa.int64()), ("width", pa.int64()), ("rle_counts", pa.string()), ("area", pa.int64()),
        ("label", pa.string()), ("label_path", pa.string()), ("score", pa.float64()), ("kind", pa.string()),
    ])

def _rows(path: str, digest: str, seg: Any) -> list[dict[str, Any]]:
    if seg.embeddings is None or not len(seg):
        return []
    h, w = seg.image_size
    return [{
        "vector": seg.embeddings[i].astype(np.float32).tolist(), "image_path": _store_path(path),
        "image_hash": digest,
        "region_id": r.id, "parent_id": r.parent_id, "bbox": list(r.bbox_xywh),
        "height": h, "width": w, "rle_counts": r.rle["counts"], "area": r.area, "label": r.label or "",
        "label_path": "/".join(r.label_path), "score": r.score,
        "kind": r.kind,
    } for i, r in enumerate(seg.regions)]


def _hit(r: dict[str, Any]) -> SearchHit:
    """A result row of the regions table as a :class:`SearchHit`."""
    return SearchHit(
        similarity=float(1.0 - r["_distance"]), image_path=_load_path(r["image_path"]), image_hash=r["image_hash"],
        region_id=int(r["region_id"]),
        parent_id=None if r["parent_id"] is None or r["parent_id"] < 0 else int(r["parent_id"]),
        bbox_xywh=tuple(float(v) for v in r["bbox"]), area=int(r["area"]),
        rle={"size": [int(r["height"]), int(r["width"])], "counts": r["rle_counts"]},
        label=r["label"] or None, label_path=tuple(p for p in r["label_path"].split("/") if p),
        score=float(r["score"]), kind=r["kind"],
    )


def example_crop(image: np.ndarray, box: Sequence[float] | None, *, size: int, margin: float, fill: str) -> np.ndarray:
    """An example query's crop, made like an indexed region's: the whole image, or its *box* (x0, y0, x1, y1)."""
    h, w = image.shape[:2]
    mask = np.zeros((h, w), dtype=bool)
    if box is None:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ClipsamError(f"box {list(box)} does not fit the {w}x{h} example image")
    mask[y0:y1, x0:x1] = True
    return crop_region(image, mask, (x0, y0, x1 - x0, y1 - y0), size=size, margin=margin, fill=fill)


def _failed(exc: Exception, path: str, on_result: Callable[[dict[str, Any]], None] | None,
            guard: FailureGuard) -> None:
    """Report one image that failed, then let *guard* judge whether the run itself is broken."""
    reason = str(exc) if isinstance(exc, ClipsamError) else f"{type(exc).__name__}: {exc}"
    log.warning("%s: %s", printable(path), reason)
    _report(on_result, path, "error", reason)
    guard.record(False, reason, image_error=isinstance(exc, ImageError))


def _indexed(db: Any, tables: set[str]) -> dict[str, str]:
    """``{content hash: path}`` of the images marked done."""
    if "images" not in tables:
        return {}
    rows = db.open_table("images").to_arrow().select(["image_hash", "image_path"]).to_pylist()
    return {r["image_hash"]: _load_path(r["image_path"]) for r in rows}


def _write_images(db: Any, tables: set[str], batch: Sequence[tuple[str, str, list[dict[str, Any]]]], dim: int,
                  moved: Mapping[str, str] | None = None) -> None:
    """Replace the rows of a batch of images in one append, then mark them done in one append (a kill in
    between leaves rows of images not marked done: they are redone, and their leftovers deleted, never
    duplicated). The rows of an image indexed before under the same path (an edited file: another hash) go
    too; images in *moved* (``{hash: new path}``) get their new path."""
    _, pa = _require_lancedb()
    rows = [r for _, _, image_rows in batch for r in image_rows]
    stale = ""
    if batch:
        hashes = ", ".join(_quote(d) for _, d, _ in batch)
        paths = ", ".join(_quote(_store_path(p)) for p, _, _ in batch)
        stale = f"image_hash IN ({hashes}) OR image_path IN ({paths})"
    for name, keys in (("regions", ["image_hash", "region_id"]), ("images", ["image_hash"])) if moved else ():
        if name in tables:
            _repath(db.open_table(name), keys, moved or {})
    if "regions" in tables:
        table = db.open_table("regions")
        if stale:
            table.delete(stale)  # leftovers of an interrupted run, and rows of the file's earlier content
        if rows:
            table.add(pa.Table.from_pylist(rows, schema=_schema(dim)))
    elif rows:
        db.create_table("regions", pa.Table.from_pylist(rows, schema=_schema(dim)))
    if not batch:
        return
    image_rows = pa.table({"image_hash": [d for _, d, _ in batch],
                           "image_path": [_store_path(p) for p, _, _ in batch],
                           "regions": [len(r) for _, _, r in batch]})
    if "images" in tables:
        table = db.open_table("images")
        table.delete(stale)
        table.add(image_rows)
    else:
        db.create_table("images", image_rows)


def _repath(table: Any, keys: list[str], moved: Mapping[str, str]) -> None:
    """Give the rows of moved images (``{hash: new path}``) their new path, in one commit (a merge on *keys*)."""
    _, pa = _require_lancedb()
    old = table.search().where(f"image_hash IN ({', '.join(_quote(d) for d in moved)})").limit(None).to_arrow()
    if old.num_rows:
        paths = pa.array([_store_path(moved[d]) for d in old.column("image_hash").to_pylist()], pa.string())
        new = old.set_column(old.schema.get_field_index("image_path"), "image_path", paths)
        table.merge_insert(keys).when_matched_update_all().execute(new)


def compaction_due(appends: int) -> bool:
    """After the *appends*-th append of a run: time to compact (16, 32, 64, 128, 256, then every 256)?"""
    if appends < COMPACT_EVERY:
        return False
    if appends <= COMPACT_MAX_EVERY:
        return appends & (appends - 1) == 0  # a power of two
    return appends % COMPACT_MAX_EVERY == 0


#: The tables' conventions: 2 = COCO's (label paths ``animal/dog``, unknown ``""``, no parent null); 1 (no
#: ``format`` in the metadata) wrote ``/animal/dog/``, ``/`` and ``-1``, and is migrated on first use.
FORMAT = 2


class _AddRun:
    """The state of one :meth:`RegionIndex.add`: finished images not yet written (written every
    ``flush_images`` images or ``flush_seconds``), moved images, counts and the failure guard."""

    def __init__(self, index: RegionIndex, seg: Any, meta: dict[str, Any] | None, done: dict[str, str],
                 on_result: Callable[[dict[str, Any]], None] | None) -> None:
        self.index, self.seg, self.meta, self.done, self.on_result = index, seg, meta, done, on_result
        self.counts = {"added": 0, "skipped": 0, "failed": 0, "regions": 0, "moved": 0}
        self.pending: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.moved: dict[str, str] = {}  # hash -> new path of images found elsewhere than indexed
        self.guard = FailureGuard()
        self.last_flush, self.flushes = time.monotonic(), 0

    def flush(self) -> None:
        if self.pending or self.moved:
            index = self.index
            _write_images(index._connect(True), index._tables(), self.pending,
                          int(self.meta["dim"]) if self.meta else 0, self.moved)
            self.pending.clear()
            self.moved.clear()
            self.flushes += 1
            if compaction_due(self.flushes):
                index.compact()
        self.last_flush = time.monotonic()

    def one(self, path: str) -> None:
        """Index the image at *path*, skip it (already indexed: perhaps moved), or report why it failed."""
        counts, on_result = self.counts, self.on_result
        try:
            digest = file_hash(path)
        except (OSError, ClipsamError) as exc:
            counts["failed"] += 1
            reason = str(exc) if isinstance(exc, ClipsamError) else f"{printable(path)}: {exc.strerror or exc}"
            _report(on_result, path, "error", reason)
            return
        if digest in self.done:
            if self.done[digest] != path and not os.path.isfile(self.done[digest]):  # the same image, moved
                self.moved[digest] = self.done[digest] = path
                counts["moved"] += 1
            counts["skipped"] += 1
            _report(on_result, path, "skipped")
            return
        try:
            result = self.seg.segment_everything(path, taxonomy=self.index.taxonomy, with_embeddings=True)
        except Exception as exc:  # one bad image never ends the run: report it and go on ...
            counts["failed"] += 1
            try:  # ... unless the run itself is broken: then stop, keeping what finished
                _failed(exc, path, on_result, self.guard)
            except SystematicFailure:
                self.flush()
                raise
            return
        self.guard.record(True)
        if self.meta is None and result.embeddings is not None and len(result):  # the embedding size is known
            self.meta = self.index._new_meta(self.seg, result)
        rows = _rows(path, digest, result)
        self.pending.append((path, digest, rows))
        self.done[digest] = path
        counts["added"] += 1
        counts["regions"] += len(rows)
        _report(on_result, path, "added", regions=len(rows))
        if len(self.pending) >= self.index.flush_images or \
                time.monotonic() - self.last_flush >= self.index.flush_seconds:
            self.flush()


class RegionIndex:
    """A searchable table of image regions.

    Args:
        path: a folder (created on first :meth:`add`) or an object-store URI that LanceDB understands.
        segmenter: the :class:`~clipsam.Segmenter` that segments, labels and embeds; by default one with the models
            the database was built with (or clipsam's defaults for a new database).
        taxonomy: labels given to indexed regions (default ``everyday``; ``None`` indexes unlabelled regions).
    """

    def __init__(self, path: str | Path, segmenter: Any = None, *, taxonomy: Any = "everyday",
                 flush_images: int = FLUSH_IMAGES, flush_seconds: float = FLUSH_SECONDS) -> None:
        if flush_images < 1:
            raise ClipsamError(f"flush_images must be at least 1, got {flush_images}")
        self.flush_images, self.flush_seconds = int(flush_images), float(flush_seconds)
        self.path = str(path)
        self._segmenter = segmenter
        self.taxonomy = taxonomy
        self._db: Any = None

    # -- storage -----------------------------------------------------------------------------------------
    def _connect(self, create: bool) -> Any:
        if self._db is None:
            lancedb, _ = _require_lancedb()
            local = "://" not in self.path
            if local and Path(self.path).exists() and not Path(self.path).is_dir():
                raise ClipsamError(f"{self.path}: is a file, not a region database (a folder made by clipsam index)")
            if local and not Path(self.path).exists() and not create:
                raise ClipsamError(f"no region index at {self.path}: build one with "
                                   f"`clipsam index SRC --db {self.path}`")
            self._db = lancedb.connect(self.path)
        return self._db

    def _tables(self) -> set[str]:
        db = self._connect(create=False)
        names = db.list_tables() if hasattr(db, "list_tables") else db.table_names()
        return set(getattr(names, "tables", names))

    def meta(self) -> dict[str, Any] | None:
        """What the database was built with (models, embedding size, taxonomy), or ``None`` if it is new."""
        if "meta" not in self._tables():
            return None
        rows = self._connect(False).open_table("meta").to_arrow().to_pylist()
        return json.loads(rows[0]["json"]) if rows else None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        _, pa = _require_lancedb()
        db = self._connect(True)
        data = pa.table({"json": [json.dumps(meta)]})
        # one commit (a new table version), never delete-then-add: a kill between the two would lose the metadata
        db.create_table("meta", data, mode="overwrite")

    @property
    def segmenter(self) -> Any:
        if self._segmenter is None:
            from .segmenter import Segmenter

            meta = self.meta() if self._exists() else None
            kw = {"sam": meta["sam"], "clip": meta["clip"]} if meta else {}
            self._segmenter = Segmenter(**kw)
        return self._segmenter

    def _exists(self) -> bool:
        return "://" in self.path or Path(self.path).exists()

    def check_models(self, meta: dict[str, Any] | None = None) -> None:
        """Refuse a segmenter whose CLIP model differs from the one the database was built with."""
        if meta is None:
            meta = self.meta() if self._exists() else None
        if meta is None:
            return
        seg = self.segmenter
        if meta.get("clip") != seg.clip_name or (meta.get("clip") == "tiny-random" and meta.get("seed") != seg.seed):
            raise ClipsamError(
                f"{self.path} was built with CLIP {meta.get('clip')!r} but this search uses {seg.clip_name!r}: "
                f"embeddings of different models cannot be compared; use --clip {meta.get('clip')} or another --db"
            )

    @staticmethod
    def taxonomy_of(meta: dict[str, Any] | None) -> Any:
        """The taxonomy a database was labelled with, when it can be loaded (shipped name or existing file)."""
        from .core.taxonomy import find_taxonomy

        return find_taxonomy((meta or {}).get("taxonomy"))

    def __len__(self) -> int:
        if not self._exists() or "regions" not in self._tables():
            return 0
        return int(self._connect(False).open_table("regions").count_rows())

    def image_count(self) -> int:
        if not self._exists() or "images" not in self._tables():
            return 0
        return int(self._connect(False).open_table("images").count_rows())

    # -- indexing ----------------------------------------------------------------------------------------
    def add(self, images: str | Path | Sequence[str | Path], *,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, int]:
        """Segment, label and embed *images* (a folder, a list file, a COCO JSON, or a list of paths), adding one row
        per region. Images already indexed (same content hash) are skipped; unreadable ones are reported and
        skipped. An image found at a new path whose indexed path is gone (a moved folder) keeps its rows, under the
        new path; an image whose content changed at an indexed path replaces that path's rows. Returns counts:
        ``added``, ``skipped`` (``moved`` of them with a new path), ``failed``, ``regions``."""
        from .dataset import list_images

        single = isinstance(images, (str, Path))
        paths = [i.path for i in list_images(images)] if single else [str(p) for p in images]
        paths = [os.path.abspath(p) for p in paths]  # hits must open from any working directory
        self._connect(create=True)
        with self._index_lock():
            meta = self.meta()
            if meta is not None and not meta.get("dim"):  # written by a run whose first image had no region
                meta = None
            self.check_models(meta)
            meta = self._migrate(meta) if meta is not None else None
            run = _AddRun(self, self.segmenter, meta, _indexed(self._connect(True), self._tables()), on_result)
            for path in paths:
                run.one(path)
            run.flush()
            if run.flushes:
                self.compact()
            self._maybe_index(run.meta)
        return run.counts

    def _new_meta(self, seg: Any, result: Any) -> dict[str, Any]:
        meta = {"clip": seg.clip_name, "sam": seg.sam_name, "seed": seg.seed, "dim": int(result.embeddings.shape[1]),
                "taxonomy": result.taxonomy, "clipsam_version": __version__, "indexed_rows": 0, "format": FORMAT}
        self._write_meta(meta)
        return meta

    def compact(self, keep_seconds: float | None = None) -> None:
        """Merge the tables' small fragments and delete versions older than *keep_seconds* (default
        :data:`KEEP_VERSIONS_SECONDS`; what LanceDB's ``optimize`` does), so that search stays as fast as on a
        table written at once, however many runs added to it."""
        import warnings
        from datetime import timedelta

        keep = KEEP_VERSIONS_SECONDS if keep_seconds is None else keep_seconds
        db = self._connect(False)
        for name in ("regions", "images"):
            if name in self._tables():
                with warnings.catch_warnings():  # its warning about concurrent readers: keep covers them
                    warnings.simplefilter("ignore", UserWarning)
                    db.open_table(name).optimize(cleanup_older_than=timedelta(seconds=keep))

    def _migrate(self, meta: dict[str, Any], strict: bool = True) -> dict[str, Any]:
        """A database written before format 2 (label paths as ``/animal/dog/``, unknown as ``/``, no parent as
        ``-1``) brought to COCO's convention (``animal/dog``, ``""``, null) in place; *strict*: a database that
        cannot be written (read-only, an object store without rights) is an error, else it is searched as it is."""
        if int(meta.get("format", 1)) >= FORMAT or "regions" not in self._tables():
            return meta
        try:
            table = self._connect(False).open_table("regions")
            table.update(values_sql={"label_path": "btrim(label_path, '/')"})
            table.update(where="parent_id < 0", values_sql={"parent_id": "NULL"})
            meta = {**meta, "format": FORMAT}
            self._write_meta(meta)
            log.info("region database %s brought to format %d (COCO label paths, null parents)", self.path, FORMAT)
        except Exception as exc:  # noqa: BLE001 -- LanceDB reports a read-only store in assorted ways
            if strict:
                raise ClipsamError(f"{self.path}: a region database from an older clipsam that cannot be updated "
                                   f"here ({type(exc).__name__}); re-index into a new --db") from exc
            log.warning("%s: an older region database, searched as it is (%s)", self.path, exc)
        return meta

    def _index_lock(self) -> Any:
        """An exclusive lock on a local database while indexing (object stores: no lock, one writer per share)."""
        if "://" in self.path:
            return contextlib.nullcontext()
        return FolderLock(self.path, "region database")

    def _maybe_index(self, meta: dict[str, Any] | None) -> None:
        rows = len(self)
        if meta is None or rows < ANN_THRESHOLD or rows < 2 * int(meta.get("indexed_rows", 0)):
            return
        log.info("building the ANN index over %d regions", rows)
        build_ann_index(self._connect(False).open_table("regions"), rows, int(meta["dim"]))
        self._write_meta({**meta, "indexed_rows": rows})

    # -- search ------------------------------------------------------------------------------------------
    def embed_query(self, query: Any, box: Sequence[float] | None = None) -> np.ndarray:
        """The unit query vector: a text (``str``: always text, even when a file of that name exists) through the
        labelling text encoder (same templates, same cache), or an example image (a ``pathlib.Path``, PIL image or
        array; optionally a *box* of it) cropped like an indexed region."""
        seg = self.segmenter
        if isinstance(query, str):
            if box is not None:
                raise ClipsamError("box= goes with an example image (--like IMAGE), not with a text query")
            if not query.strip():
                raise ClipsamError("the text query is empty")
            return seg.text_bank.embed([(query,)])[0]
        crop = example_crop(load_image(query), box, size=seg.embedder.image_size, margin=seg.crop_margin,
                            fill=seg.crop_fill)
        return seg.embedder.embed_images([crop])[0]

    def search(self, query: Any, *, k: int = 10, box: Sequence[float] | None = None, label: str | None = None,
               min_area: int | None = None, where: str | None = None) -> list[SearchHit]:
        """The *k* regions most similar to *query*: a text (``str``), or an example image (``pathlib.Path``, PIL
        image or array) with an optional *box* ``(x0, y0, x1, y1)``.

        Args:
            label: keep regions whose label path contains this label (``vehicle`` keeps cars and buses); matched
                literally (``%`` and ``_`` are not wildcards).
            min_area: keep regions of at least this many pixels.
            where: an extra condition in LanceDB's SQL over the table's columns (``score > 0.5``,
                ``kind = 'object'``). It is raw SQL, so pass only trusted text; it is checked to be one
                self-contained condition (balanced parentheses, no ``;`` or comments) and ANDed with the others.
        """
        if k < 1:
            raise ClipsamError(f"k must be at least 1, got {k}")
        if not self._exists():
            raise ClipsamError(f"no region index at {self.path}: build one with `clipsam index SRC --db {self.path}`")
        meta = self.meta()
        if meta is None or "regions" not in self._tables() or len(self) == 0:
            raise ClipsamError(f"the region index at {self.path} is empty: add images with `clipsam index SRC "
                               f"--db {self.path}`")
        self.check_models(meta)
        meta = self._migrate(meta, strict=False)
        vec = self.embed_query(query, box)
        if vec.shape[0] != int(meta["dim"]):
            raise ClipsamError(f"query embedding has {vec.shape[0]} dimensions, the index {meta['dim']}")
        filters = []
        if label:  # strpos, not LIKE: a label is literal text, never a pattern; any level of the path
            filters.append(f"strpos(concat('/', label_path, '/'), {_quote('/' + label.strip('/') + '/')}) > 0")
        if min_area:
            filters.append(f"area >= {int(min_area)}")
        if where:
            filters.append(check_where(where))
        filters = [f"({f})" for f in filters]
        table = self._connect(False).open_table("regions")
        q = table.search(vec.astype(np.float32)).distance_type("cosine").limit(k)
        if int(meta.get("indexed_rows", 0)):
            q = q.nprobes(ANN_SEARCH["nprobes"]).refine_factor(ANN_SEARCH["refine_factor"])
        if filters:
            q = q.where(" AND ".join(filters), prefilter=True)
        try:
            rows = q.to_list()
        except Exception as exc:  # LanceDB reports bad SQL as assorted errors
            raise ClipsamError(f"search failed: {exc}") from exc
        return [_hit(r) for r in rows]
