"""Pseudo-labelling image collections into COCO, resumably.

Every image's result is written atomically to ``OUT/parts/`` as soon as it is finished, so a killed run (even
``kill -9``) loses at most the images in flight; a rerun with the same ``OUT`` skips finished images and rebuilds
``annotations.json`` from the parts, byte-identical to an uninterrupted run. The same per-image function runs
in-process, in a local process pool (``workers``) or in Ray actors (``engine="ray"``).

Layout of ``OUT``::

    annotations.json      COCO: images, categories (from the taxonomy), annotations with RLE, score,
                          label_path, parent_id
    errors.jsonl          one line per image that could not be processed: {"path", "image_id", "reason"}
    run.json              provenance: version, models, weight hashes, parameters, times, counts
    parts/<id>.json       one finished image (or parts/<id>.error.json)
    data.yaml, labels/, images/   optional (--format yolo): YOLO-seg polygons, names, links to the images
    semantic/<name>.png   optional (--png): category id per pixel (16-bit), named like the image
                          (photos/kitchen/cat.jpg -> semantic/kitchen/cat.png; see output_stems)
    instances/<name>.png  optional (--png): annotation index per pixel within the image (16-bit)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .core.image import UNSUPPORTED_SUFFIXES
from .core.taxonomy import load_taxonomy
from .errors import ClipsamError, ImageError, OutputError
from .export import annotations as annotations_of
from .export import category_key, category_table, coco_info, paint
from .failures import FailureGuard
from .files import (
    MAX_DATA_BYTES,
    NAME_MAX,
    atomic_write,
    bounded_name,
    marked_image_bytes,
    read_capped,
    read_text_capped,
    same_file,
    written_by_clipsam,
)
from .lock import FolderLock
from .result import Region, Segmentation

log = logging.getLogger(__name__)

#: Exports :class:`LabelJob` can write besides ``annotations.json``.
EXPORT_FORMATS = ("yolo", "label-studio", "cvat")

#: Bytes the longest ending clipsam adds to an output stem may take (``.jpeg``, ``.tiff``, ``.webp``).
MAX_ADDED_SUFFIX = 5
#: Names of part files: ``<image id>.json`` and ``<image id>.error.json``; anything else in ``parts/`` is ignored.
PART_NAME = re.compile(r"^(-?\d{1,19})(\.error)?\.json$")
#: Sub-folders of OUT that clipsam writes into (never through a link).
OUTPUT_FOLDERS = ("parts", "semantic", "instances", "labels", "images", "cvat", "cvat/images")
#: The largest id a 16-bit semantic or instance PNG holds.
PNG_MAX_ID = 65535

#: File endings treated as images when a folder is given.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

__all__ = ["EXPORT_FORMATS", "IMAGE_SUFFIXES", "Filters", "ImageItem", "LabelJob", "assemble", "category_table",
           "list_images", "output_stems", "stable_image_id"]


@dataclass(frozen=True)
class ImageItem:
    """One image to label: its path, its stable COCO id, the ``file_name`` recorded in COCO, and the name its
    per-image outputs get (``semantic/<stem>.png``, YOLO ``labels/<stem>.txt``; see :func:`output_stems`)."""

    path: str
    image_id: int
    file_name: str
    stem: str = ""

    @property
    def output_stem(self) -> str:
        return self.stem or output_stems([self.file_name], [self.image_id])[0]


def output_stems(file_names: Sequence[str], image_ids: Sequence[int] | None = None) -> list[str]:
    """Names for per-image outputs from COCO ``file_name``s: the relative path without its ending
    (``kitchen/cat.jpg`` -> ``kitchen/cat``), so masks sit beside the images' own names. Absolute paths and
    ``..`` keep only their safe parts (outputs never leave ``OUT``); names that would repeat (``cat.jpg`` and
    ``cat.png``) keep their ending (``cat.jpg``, ``cat.png``); the image id is added as the last resort. A name
    too long for the file system once an ending is added is cut and tagged with a hash of the whole name
    (:func:`clipsam.files.bounded_name`); each part file records its stem (``source.stem``)."""
    def parts_of(name: str) -> list[str]:
        return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")] or ["image"]

    def strip(parts: list[str]) -> str:
        last = parts[-1]
        cut = last.rfind(".")
        stem = last[:cut] if cut > 0 else last
        return "/".join([*parts[:-1], stem if stem.strip(".") else last])

    def repeated(names: list[str]) -> set[str]:
        seen: set[str] = set()
        return {n for n in names if n in seen or seen.add(n)}  # type: ignore[func-returns-value]

    full = ["/".join(parts_of(n)) for n in file_names]
    short = [strip(parts_of(n)) for n in file_names]
    twice = repeated(short)
    names = [f if s in twice else s for s, f in zip(short, full, strict=True)]
    twice = repeated(names)
    ids = list(image_ids) if image_ids is not None else list(range(len(names)))
    names = [f"{n}-{i}" if n in twice else n for n, i in zip(names, ids, strict=True)]
    return ["/".join(bounded_name(part, NAME_MAX - MAX_ADDED_SUFFIX) for part in n.split("/")) for n in names]


@dataclass(frozen=True)
class Filters:
    """Which regions go into the dataset.

    Attributes:
        min_score: minimum label score (unknown regions have 0 and are governed by *include_unknown*).
        min_area: minimum mask area in pixels (original resolution).
        labels: keep only regions whose label path contains one of these labels (empty: all).
        max_regions: keep at most this many regions per image, highest score first (0: no limit).
        include_unknown: keep ``unknown`` / ``unknown part`` regions.
    """

    min_score: float = 0.0
    min_area: int = 0
    labels: tuple[str, ...] = ()
    max_regions: int = 0
    include_unknown: bool = False

    def apply(self, seg: Segmentation) -> list[Region]:
        """The kept regions, in id order, each re-parented to its nearest kept ancestor."""
        return list(seg.regions.select(min_score=self.min_score, min_area=self.min_area, labels=self.labels,
                                       max_regions=self.max_regions, include_unknown=self.include_unknown))


def stable_image_id(relative_path: str) -> int:
    """A COCO image id from the path relative to the source: the same file gets the same id in every run.

    Works for any file name, including names that are not valid UTF-8 (their raw bytes are hashed)."""
    return int(hashlib.sha1(os.fsencode(relative_path.replace(os.sep, "/"))).hexdigest()[:12], 16)


def list_images(source: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                allow_outside_root: bool = False) -> list[ImageItem]:
    """The images of *source*: a folder (searched recursively), a text file of paths, or a COCO JSON.

    Paths in a text file or COCO JSON are relative to that file's folder (or to *image_root*). A COCO JSON's
    ``file_name`` must lie inside that root (``../`` and absolute paths are refused) unless *allow_outside_root*.
    COCO image ids are kept; other ids come from :func:`stable_image_id`. Items are sorted by id. A folder also
    lists image-like files clipsam cannot decode (SVG, HEIC …), so that each gets an error row rather than
    vanishing; hidden files are skipped.

    Raises:
        ClipsamError: *source* is missing, is a single image, or is a malformed list or COCO file.
    """
    src = Path(source).expanduser()
    wanted = IMAGE_SUFFIXES + tuple(UNSUPPORTED_SUFFIXES)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in wanted
                       and not any(part.startswith(".") for part in p.relative_to(src).parts))
        items = [ImageItem(str(p), stable_image_id(p.relative_to(src).as_posix()), p.relative_to(src).as_posix())
                 for p in files]
    elif src.is_file() and src.suffix.lower() == ".json":
        items = _coco_items(src, Path(image_root) if image_root else src.parent, allow_outside_root)
    elif src.is_file() and src.suffix.lower() in wanted:
        raise ClipsamError(f"{src}: is an image, not a collection; give its folder, or a text file that lists it")
    elif src.is_file():
        root = Path(image_root) if image_root else src.parent
        try:  # a regular file under the cap (ClipsamError names the problem), then UTF-8 text
            lines = [ln.strip() for ln in read_capped(src, MAX_DATA_BYTES, "list of image paths").decode().splitlines()]
        except UnicodeDecodeError:
            raise ClipsamError(f"{src}: not a text file of image paths (not UTF-8 text); give a folder of images, "
                               "a text file of paths, or a COCO JSON") from None
        names = [ln for ln in lines if ln and not ln.startswith("#")]
        items = [ImageItem(str(Path(n) if Path(n).is_absolute() else root / n), stable_image_id(n), n) for n in names]
    else:
        raise ClipsamError(f"{src}: no such folder or file (give a folder of images, a text file of paths, "
                           "or a COCO JSON)")
    ids = [i.image_id for i in items]
    if len(set(ids)) != len(ids):
        raise ClipsamError(f"{src}: image ids are not unique (duplicate file names?)")
    stems = output_stems([i.file_name for i in items], ids)
    return sorted((dataclasses.replace(i, stem=s) for i, s in zip(items, stems, strict=True)),
                  key=lambda i: i.image_id)


def _coco_items(src: Path, root: Path, allow_outside_root: bool) -> list[ImageItem]:
    try:
        data = json.loads(read_text_capped(src, "COCO JSON"))
        images = data["images"]
        if not isinstance(images, list):
            raise TypeError("'images' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise ClipsamError(f"{src}: not a COCO JSON with an 'images' list ({exc})") from None
    base = root.resolve()
    items = []
    for k, im in enumerate(images):
        if not isinstance(im, dict):
            raise ClipsamError(f"{src}: images[{k}] is not an object")
        name, image_id = im.get("file_name"), im.get("id")
        if not isinstance(name, str) or not name.strip():
            raise ClipsamError(f"{src}: images[{k}] (id {image_id!r}) has no 'file_name'")
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise ClipsamError(f"{src}: images[{k}] ({name!r}) has id {str(image_id)[:40]!r}; COCO image ids are "
                               "integers")
        if not -(2**63) <= image_id < 2**63:
            raise ClipsamError(f"{src}: images[{k}] ({name!r}) has id {str(image_id)[:20]}… ({len(str(image_id))} "
                               "digits); COCO image ids must fit 64 bits")
        if "\0" in name:
            raise ClipsamError(f"{src}: images[{k}] (id {image_id}) has a NUL byte in its file_name, which no file "
                               "name can hold")
        path = root / name
        if not allow_outside_root:
            inside = os.path.commonpath([base, path.resolve()]) == str(base) if not Path(name).is_absolute() else False
            if not inside:
                raise ClipsamError(f"{src}: images[{k}] file_name {name!r} lies outside the image root {root}; "
                                   "use --image-root, or --allow-outside-root if that is intended")
        items.append(ImageItem(str(path), image_id, name))
    return items


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    # marked, so that a later run knows the file is clipsam's
    atomic_write(path, marked_image_bytes(Image.fromarray(array.astype(np.uint16)), ".png"))


@dataclass
class LabelJob:
    """One labelling run into ``out``: what to label and with which settings.

    Args:
        out: the output folder (created; reused for resuming).
        taxonomy: shipped name, YAML path or :class:`Taxonomy`.
        filters: which regions to keep.
        segmenter_spec: keyword arguments of :class:`~clipsam.Segmenter` (names, not objects, so that worker
            processes and Ray actors can build their own).
        pngs: also write semantic and instance PNGs.
        segment_params: extra arguments of ``segment_everything`` (e.g. ``part_points``).
        formats: exports besides ``annotations.json``, written by :meth:`finish` from the finished images (so
            adding one to a finished run and rerunning writes it without labelling again): ``"yolo"``
            (:func:`clipsam.yolo.write_yolo`), ``"label-studio"``
            (:func:`clipsam.labelstudio.tasks.write_label_studio`), ``"cvat"`` (:func:`clipsam.cvat.write_cvat`).
        ls_root: with ``label-studio``, the prefix of each task's image address (``file_name`` follows).
    """

    out: Path
    taxonomy: Any
    filters: Filters = field(default_factory=Filters)
    segmenter_spec: dict[str, Any] = field(default_factory=dict)
    pngs: bool = False
    segment_params: dict[str, Any] = field(default_factory=dict)
    formats: tuple[str, ...] = ()
    ls_root: str = "/data/local-files/?d="

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        unknown = sorted(set(self.formats) - set(EXPORT_FORMATS))
        if unknown:
            raise ClipsamError(f"unknown export format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)}")
        self.tax = load_taxonomy(self.taxonomy)
        self.categories = category_table(self.tax, self.filters.include_unknown)
        self.cat_ids = {c["label_path"]: c["id"] for c in self.categories}
        top_id = max(self.cat_ids.values(), default=0)
        if self.pngs and top_id > PNG_MAX_ID:
            raise ClipsamError(f"--png writes 16-bit PNGs (ids up to {PNG_MAX_ID:,}), and taxonomy {self.tax.name!r} "
                               f"has category ids up to {top_id:,}: label without --png (annotations.json holds every "
                               "category), or with a smaller taxonomy")
        self._lock = FolderLock(self.out, "output folder")

    def __getstate__(self) -> dict[str, Any]:  # worker processes and Ray actors get the job, not the lock
        state = dict(self.__dict__)
        state["_lock"] = FolderLock(self.out, "output folder")
        return state

    # -- provenance / resume ------------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        from .segmenter import Segmenter

        # the runtime changes results only with speed="fast" (int8 CLIP on ONNX Runtime), where config() names it
        spec = {k: v for k, v in self.segmenter_spec.items() if k != "device"}
        config = Segmenter(**{**spec, "taxonomy": self.tax}).config()
        return {"segmenter": config, "taxonomy": self.tax.to_dict(), "filters": self.filters.__dict__ | {
            "labels": list(self.filters.labels)}, "pngs": self.pngs, "segment_params": dict(self.segment_params)}

    def fingerprint(self, parameters: dict[str, Any] | None = None) -> str:
        params = self.parameters() if parameters is None else parameters
        return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()

    def prepare(self, force: bool = False, items: Sequence[ImageItem] | None = None, *,
                overwrite: bool = False) -> dict[str, Any]:
        """Lock ``out``, create it or check that it was made with the same parameters; returns the run record.

        The lock (``out/.clipsam.lock``) is held until :meth:`finish` or :meth:`close`; a second run on the same
        ``out`` meanwhile raises :class:`~clipsam.errors.LockError` naming the holder, also with ``force``.

        With *items* (the images to label), the files the run would write are checked first (:meth:`check_outputs`):
        none may be an input, and a folder that holds no earlier clipsam run may not hold files at those paths
        unless *overwrite*.
        """
        if self.out.exists() and not self.out.is_dir():
            raise ClipsamError(f"{self.out}: is a file; the output must be a folder (new, or one of an earlier run)")
        self._lock.acquire()
        try:
            return self._prepare_locked(force, items, overwrite)
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the lock on ``out`` (done by :meth:`finish`; call it when a run stops early)."""
        self._lock.release()

    def _prepare_locked(self, force: bool, items: Sequence[ImageItem] | None, overwrite: bool) -> dict[str, Any]:
        run_path = self.out / "run.json"
        for sub in OUTPUT_FOLDERS:
            if (self.out / sub).is_symlink():
                raise OutputError(f"{self.out / sub}: is a symbolic link; clipsam writes only into real folders "
                                  "inside --out (remove the link, or choose another --out)")
        if items is not None:
            self.check_outputs(items, claimed=run_path.is_file(), overwrite=overwrite)
        params = self.parameters()
        fp = self.fingerprint(params)
        if run_path.is_file():
            try:
                old = json.loads(run_path.read_text())
            except ValueError:
                old = {}
            if old.get("fingerprint") != fp:
                if not force:
                    changed = _changed_keys(old.get("parameters", {}), params)
                    raise ClipsamError(
                        f"{self.out} holds a run with different parameters ({', '.join(changed) or 'unknown'}); "
                        "resuming would mix results. Use --force to discard it and start over, or choose another --out"
                    )
                for sub in ("parts", "semantic", "instances", "labels"):
                    shutil.rmtree(self.out / sub, ignore_errors=True)
                for link in (self.out / "images").rglob("*") if (self.out / "images").is_dir() else ():
                    if link.is_symlink():  # only the links clipsam made: never a user's own files
                        link.unlink()
                for name in ("annotations.json", "errors.jsonl", "data.yaml"):
                    (self.out / name).unlink(missing_ok=True)
        (self.out / "parts").mkdir(parents=True, exist_ok=True)
        for sub in ("parts", "semantic", "instances", "labels", "images"):  # temporary files of a killed run
            for tmp in (self.out / sub).rglob(".*.tmp") if (self.out / sub).is_dir() else ():
                tmp.unlink(missing_ok=True)
        if self.pngs:
            (self.out / "semantic").mkdir(exist_ok=True)
            (self.out / "instances").mkdir(exist_ok=True)
        record = {"clipsam_version": __version__, "fingerprint": fp, "parameters": params,
                  "models": {"sam": self.segmenter_spec.get("sam"), "clip": self.segmenter_spec.get("clip")},
                  "weights": _weight_hashes(self.segmenter_spec), "started": _now(), "finished": None}
        atomic_write(run_path, json.dumps(record, indent=2, default=str).encode())
        return record

    def inputs(self, items: Sequence[ImageItem]) -> list[ImageItem]:
        """*items* without this job's own outputs, for a source folder that holds ``out``: its PNGs, part files and
        the links it made in ``images/`` are never labelled as images."""
        root = os.path.abspath(self.out)
        own = tuple(os.path.join(root, sub) + os.sep for sub in OUTPUT_FOLDERS if sub != "images")
        links = os.path.join(root, "images") + os.sep
        return [i for i in items if not (os.path.abspath(i.path).startswith(own) or (
            os.path.abspath(i.path).startswith(links) and os.path.islink(i.path)))]

    def output_paths(self, items: Sequence[ImageItem]) -> Iterator[tuple[str, ImageItem | None]]:
        """Every file this job may write, relative to ``out``, with the item it belongs to (``None``: the run's)."""
        yield from ((name, None) for name in ("annotations.json", "errors.jsonl", "run.json"))
        if "yolo" in self.formats:
            yield "data.yaml", None
        if "label-studio" in self.formats:
            yield from (("label-studio.json", None), ("label-studio-config.xml", None))
        if "cvat" in self.formats:
            yield "cvat/annotations.xml", None
        for item in items:
            stem = item.output_stem
            if self.pngs:
                yield f"semantic/{stem}.png", item
                yield f"instances/{stem}.png", item
            if "yolo" in self.formats:
                yield f"labels/{stem}.txt", item
                yield f"images/{stem}{Path(item.file_name).suffix.lower()}", item
            if "cvat" in self.formats:
                yield f"cvat/images/{stem}{Path(item.file_name).suffix}", item

    def check_outputs(self, items: Sequence[ImageItem], *, claimed: bool, overwrite: bool = False) -> None:
        """Refuse a run that would change the user's files, before anything is written.

        No output may be an input image (hard links and links followed); a YOLO ``images/`` entry that *is* the
        item's own image (labelling a YOLO layout in place) is left as it is. Files that exist at output paths of a
        folder no clipsam run has *claimed* (it has no ``run.json``), and regular files where clipsam puts image
        links, are not clipsam's: they are replaced only with *overwrite*.

        Raises:
            OutputError: naming the first files and how many.
        """
        inputs = {}
        for item in items:
            with contextlib.suppress(OSError):
                st = os.stat(item.path)
                inputs[(st.st_dev, st.st_ino)] = item.path
        foreign: list[str] = []
        for rel, item in self.output_paths(items):
            path = self.out / rel
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):  # a link is replaced, never written through: its target is safe
                continue
            image_link = rel.startswith(("images/", "cvat/images/"))
            if (st.st_dev, st.st_ino) in inputs:
                if image_link and item is not None and same_file(path, item.path):
                    continue  # the image already lies where Ultralytics looks for it: nothing to link
                raise OutputError(f"{path}: is the input image {inputs[(st.st_dev, st.st_ino)]}; clipsam never "
                                  "writes over its inputs (choose another --out)")
            if not overwrite and (image_link or not claimed) and not written_by_clipsam(path):
                foreign.append(rel)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3:,} more" if len(foreign) > 3 else "")
            raise OutputError(f"{self.out}: holds {len(foreign):,} file(s) clipsam did not write where this run would "
                              f"write ({shown}); choose a new --out, or pass --overwrite to replace them")

    def pending(self, items: Sequence[ImageItem]) -> list[ImageItem]:
        """Items without a finished part file (failed ones are tried again)."""
        return [i for i in items if not (self.out / "parts" / f"{i.image_id}.json").is_file()]

    # -- one image --------------------------------------------------------------------------------------
    def process(self, segmenter: Any, item: ImageItem) -> dict[str, Any]:
        """Label one image and write its part file; never raises for a bad image (records the error)."""
        parts = self.out / "parts"
        try:
            seg = segmenter.segment_everything(item.path, taxonomy=self.tax, **self.segment_params)
            regions = self.filters.apply(seg)
            h, w = seg.image_size
            if self.pngs:
                self._write_pngs(item.output_stem, (h, w), regions)
        except Exception as exc:  # one bad image must never end the batch: record it and go on
            reason = str(exc) if isinstance(exc, (ImageError, ClipsamError)) else f"{type(exc).__name__}: {exc}"
            log.warning("%s: %s", item.path, reason)
            record = {"path": item.path, "image_id": item.image_id, "file_name": item.file_name, "reason": reason}
            atomic_write(parts / f"{item.image_id}.error.json", json.dumps(record).encode())
            return {"image_id": item.image_id, "status": "error", "reason": record["reason"],
                    "image_error": isinstance(exc, ImageError)}
        part = {"image": {"id": item.image_id, "file_name": item.file_name, "height": h, "width": w},
                "source": {"path": item.path, "stem": item.output_stem}, "regions": [r.to_dict() for r in regions]}
        atomic_write(parts / f"{item.image_id}.json", json.dumps(part).encode())
        (parts / f"{item.image_id}.error.json").unlink(missing_ok=True)
        return {"image_id": item.image_id, "status": "done", "regions": len(regions)}

    def _write_pngs(self, stem: str, size: tuple[int, int], regions: list[Region]) -> None:
        if len(regions) > PNG_MAX_ID:
            raise OutputError(f"an instance PNG holds at most {PNG_MAX_ID:,} regions (16-bit), this image has "
                              f"{len(regions):,}: pass --max-regions, or label without --png")
        rles = [r.rle for r in regions]
        semantic = paint(rles, [self.cat_ids.get(category_key(r), 0) for r in regions], size)
        instances = paint(rles, list(range(1, len(regions) + 1)), size)
        for sub, array in (("semantic", semantic), ("instances", instances)):
            path = self.out / sub / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_png(path, array)

    # -- the end ----------------------------------------------------------------------------------------
    def finish(self, record: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
        """Write ``annotations.json`` and ``errors.jsonl`` from the parts, complete ``run.json``, release the lock."""
        try:
            sources: dict[int, tuple[str, str]] = {}
            coco, errors = assemble(self.out, self.categories, sources)
            atomic_write(self.out / "annotations.json", json.dumps(coco).encode())
            counts = write_exports(self, coco, sources, counts)
            atomic_write(self.out / "errors.jsonl", "".join(json.dumps(e) + "\n" for e in errors).encode())
            counts = dict(counts, images=len(coco["images"]), annotations=len(coco["annotations"]),
                          errors=len(errors))
            record = dict(record, finished=_now(), counts=counts)
            atomic_write(self.out / "run.json", json.dumps(record, indent=2, default=str).encode())
        finally:
            self.close()
        return record


def write_exports(job: LabelJob, coco: dict[str, Any], sources: dict[int, tuple[str, str]], counts: dict[str, int]
                  ) -> dict[str, int]:
    """The exports *job* asks for besides COCO, from the run's *coco*; returns *counts* with theirs added."""
    if "yolo" in job.formats:
        from .yolo import write_yolo

        counts = dict(counts, yolo_polygons=write_yolo(job.out, coco, sources)["polygons"])
    if "label-studio" in job.formats:
        from .labelstudio.tasks import write_label_studio

        version = f"clipsam-{job.segmenter_spec.get('sam')}-{job.segmenter_spec.get('clip')}"
        done = write_label_studio(job.out, coco, job.tax, root=job.ls_root, model_version=version)
        counts = dict(counts, label_studio_tasks=done["tasks"])
    if "cvat" in job.formats:
        from .cvat import write_cvat

        counts = dict(counts, cvat_masks=write_cvat(job.out, coco, sources)["masks"])
    return counts


def assemble(out: Path, categories: list[dict[str, Any]], sources: dict[int, tuple[str, str]] | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build the COCO dict and the error list from ``out/parts`` (deterministic: sorted by image id); fills
    *sources* with ``{image id: (image path, output stem)}`` when given."""
    cat_ids = {c["label_path"]: c["id"] for c in categories}
    images, annotations, errors = [], [], []
    parts = []
    for path in (out / "parts").glob("*.json"):
        match = PART_NAME.match(path.name)
        if match is None:  # macOS ._ files, editor backups: not clipsam's
            log.warning("%s: not a part file clipsam wrote (expected <image id>.json); ignored", path)
            continue
        parts.append((int(match.group(1)), path.name, path))
    next_id = 1
    for _, _, path in sorted(parts):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if path.name.endswith(".error.json"):
                if not (out / "parts" / f"{data['image_id']}.json").is_file():
                    errors.append({"path": data["path"], "image_id": data["image_id"], "reason": data["reason"]})
                continue
            regions = [Region.from_dict(d) for d in data["regions"]]
            data["image"]["id"]  # noqa: B018 - a part without an image id is not one of clipsam's
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: unreadable part file (%s: %s); ignored", path, type(exc).__name__, exc)
            continue
        images.append(data["image"])
        if sources is not None and "source" in data:
            sources[data["image"]["id"]] = (data["source"]["path"], data["source"]["stem"])
        annotations += annotations_of(regions, data["image"]["id"], cat_ids, first_id=next_id)
        next_id += len(regions)
    coco = {"info": coco_info("clipsam pseudo-labels"), "licenses": [],
            "images": images, "categories": categories, "annotations": annotations}
    return coco, errors


def _guarded(on_result: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None]:
    """*on_result*, then :class:`~clipsam.failures.FailureGuard`: the same error, not about an image, on the first
    images or many in a row stops the run (:class:`~clipsam.failures.SystematicFailure`; finished parts stay)."""
    guard = FailureGuard()

    def report(res: dict[str, Any]) -> None:
        if on_result:
            on_result(res)
        guard.record(res["status"] != "error", res.get("reason", ""), image_error=bool(res.get("image_error")))

    return report


def run_local(job: LabelJob, items: Sequence[ImageItem], *, segmenter: Any = None, workers: int = 1,
              on_result: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Process *items* in this process (``workers=1``) or a pool of *workers* processes.

    Raises:
        SystematicFailure: the same error, not about any one image, on the first images or many in a row.
    """
    on_result = _guarded(on_result)
    if workers <= 1:
        from .segmenter import Segmenter

        seg = segmenter or Segmenter(**{**job.segmenter_spec, "taxonomy": job.tax})
        for item in items:
            on_result(job.process(seg, item))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # torch and fork do not mix
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(job, threads, os.getpid()))
    try:
        futures = [pool.submit(_work, item) for item in items]
        for fut in as_completed(futures):
            on_result(fut.result())
    except BaseException:  # a full disk, an interrupt: stop the queue rather than fail every image in turn
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


_WORKER: dict[str, Any] = {}


def _init_worker(job: LabelJob, threads: int, parent_pid: int) -> None:
    import torch

    from .segmenter import Segmenter

    exit_with_parent(parent_pid)
    torch.set_num_threads(threads)
    _WORKER["job"] = job
    _WORKER["seg"] = Segmenter(**{**job.segmenter_spec, "taxonomy": job.tax})


def exit_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Make this worker process end when its parent does, even after ``kill -9`` of the parent (no orphans
    holding a model's memory): the kernel's parent-death signal on Linux, and a watchdog thread everywhere."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="clipsam-parent-watch", daemon=True).start()


def _work(item: ImageItem) -> dict[str, Any]:
    return _WORKER["job"].process(_WORKER["seg"], item)


class _RayLabeller:
    """A Ray Data actor: one Segmenter per actor, reused for every image it gets."""

    def __init__(self, job: LabelJob) -> None:
        from .segmenter import Segmenter

        self.job = job
        self.seg = Segmenter(**{**job.segmenter_spec, "taxonomy": job.tax})

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        results = [self.job.process(self.seg, ImageItem(str(p), int(i), str(f)))
                   for p, i, f in zip(batch["path"], batch["image_id"], batch["file_name"], strict=True)]
        return {"image_id": np.asarray([r["image_id"] for r in results], dtype=np.int64),
                "status": np.asarray([r["status"] for r in results]),
                "reason": np.asarray([r.get("reason", "") for r in results]),
                "image_error": np.asarray([bool(r.get("image_error")) for r in results])}


def run_ray(job: LabelJob, items: Sequence[ImageItem], *, workers: int = 1,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Process *items* on Ray Data with an actor pool of *workers* segmenters (one GPU each when CUDA is there).

    Connects to the cluster in ``RAY_ADDRESS`` when set, else starts a local Ray instance.
    """
    try:
        import ray
    except ImportError as exc:
        raise ClipsamError("the Ray engine needs Ray: pip install 'clipsam[ray]'") from exc
    import torch

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    if not items:
        return
    gpus = 1 if torch.cuda.is_available() else 0
    ds = ray.data.from_items([{"path": i.path, "image_id": i.image_id, "file_name": i.file_name} for i in items])
    out = ds.map_batches(_RayLabeller, fn_constructor_kwargs={"job": job}, batch_size=1,
                         compute=ray.data.ActorPoolStrategy(size=max(1, workers)), num_gpus=gpus, num_cpus=1)
    on_result = _guarded(on_result)
    for row in out.iter_rows():
        on_result({"image_id": int(row["image_id"]), "status": str(row["status"]), "reason": str(row["reason"]),
                   "image_error": bool(row["image_error"])})


def _weight_hashes(spec: dict[str, Any]) -> dict[str, str]:
    from . import weights as W

    out = {}
    for key in ("sam", "clip"):
        name = spec.get(key)
        if name and name in W.REGISTRY:
            out[name] = W.expected_sha256(W.REGISTRY[name]) or ""
    return out


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            keys.append(prefix + k)
    return keys


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

