"""The pipeline: image in -> SAM proposals -> CLIP labels (taxonomy) -> part-whole tree -> :class:`Segmentation`.

:class:`Segmenter` owns the models (loaded lazily on first use) and the per-image embedding cache; it only talks
to the :class:`~clipsam.models.base.MaskProposer` and :class:`~clipsam.models.base.RegionEmbedder` interfaces.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import masks as M
from . import tree as T
from .crops import FILL_MODES, crop_region
from .errors import ConfigError, ModelError, PromptError
from .image import ImageInput, fit_long_side, load_image, source_name
from .labels import (
    DEFAULT_NEGATIVES,
    DEFAULT_TEMPLATES,
    LabelDecision,
    TextBank,
    descend,
    label_hierarchical,
    score_flat,
)
from .models.base import TINY, TINY_GENERATOR_PARAMS, MaskProposer, RegionEmbedder
from .result import Region, Segmentation
from .taxonomy import Taxonomy, TaxonomyNode, load_taxonomy

log = logging.getLogger(__name__)

#: Default SAM and CLIP registry names.
DEFAULT_SAM = "vit_b"
DEFAULT_CLIP = "ViT-B-16/openai"
#: Images are processed with their long side at most this many pixels; masks come back at full resolution.
DEFAULT_MAX_SIDE = 1024
_EMBED_CACHE_SIZE = 4


@dataclass(frozen=True)
class _Work:
    """One image prepared for the pipeline."""

    original_size: tuple[int, int]
    pixels: np.ndarray  # (h, w, 3) uint8 at processing size
    key: str
    path: str | None

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): processing pixels per original pixel."""
        return (self.pixels.shape[0] / self.original_size[0], self.pixels.shape[1] / self.original_size[1])


@dataclass
class _Candidates:
    """Regions at processing resolution, in canonical order, with everything known about them so far."""

    rles: list[M.RLE]
    predicted_iou: np.ndarray
    stability: np.ndarray
    parents: np.ndarray
    decisions: list[LabelDecision]
    kinds: list[str]


class Segmenter:
    """Text-prompted, hierarchical segmentation with SAM proposals and CLIP labels.

    Args:
        sam: SAM registry name (``vit_b``, ``vit_l``, ``vit_h``) or ``tiny-random`` (tests only).
        clip: CLIP registry name (``ViT-B-16/openai`` …) or ``tiny-random``.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        taxonomy: default taxonomy (shipped name, YAML path or :class:`Taxonomy`) for labels and trees.
        max_side: long side of the processing size in pixels (``None``: full resolution).
        templates: prompt templates averaged into each label's text embedding.
        negatives: background labels that compete with real labels, so that "nothing matches" is possible.
        min_confidence: softmax probability a top-level label needs to be accepted (else ``unknown``).
        descend_confidence: probability a child label needs to replace its parent ("dog" -> "puppy").
        part_confidence: probability a part label needs inside a labelled object (else ``unknown part``).
        crop_margin: context around each mask's box in its CLIP crop, as a share of the box's long side.
        crop_fill: how pixels outside the mask are neutralised in crops: ``grey``, ``blur`` or ``none``.
        containment: share of a mask that must lie inside another for it to be its child in the tree.
        duplicate_iou: masks with at least this IoU are merged as one region.
        part_pred_iou: coarse-to-fine part masks need at least this predicted IoU.
        max_part_share: coarse-to-fine part masks may cover at most this share of their object.
        generator_params: defaults for SAM's automatic mask generator (points_per_side, pred_iou_thresh, …).
        download: fetch missing weights (else raise a message saying how to import them).
        text_cache: keep text embeddings on disk under ``$CLIPSAM_HOME/text-embeddings``.
        precision: ``fp32`` (default; SAM masks identical to stock) or ``bf16`` (autocast on CUDA: faster,
            masks differ slightly).
        seed: seed of the ``tiny-random`` models.
    """

    def __init__(
        self,
        sam: str = DEFAULT_SAM,
        clip: str = DEFAULT_CLIP,
        *,
        device: str = "auto",
        taxonomy: str | Taxonomy | None = None,
        max_side: int | None = DEFAULT_MAX_SIDE,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        negatives: Sequence[str] = DEFAULT_NEGATIVES,
        min_confidence: float = 0.3,
        descend_confidence: float = 0.5,
        part_confidence: float = 0.3,
        crop_margin: float = 0.1,
        crop_fill: str = "grey",
        containment: float = T.DEFAULT_CONTAINMENT,
        duplicate_iou: float = T.DEFAULT_DUPLICATE_IOU,
        part_pred_iou: float = 0.5,
        max_part_share: float = 0.8,
        generator_params: dict[str, Any] | None = None,
        download: bool = True,
        text_cache: bool = True,
        precision: str = "fp32",
        seed: int = 0,
    ) -> None:
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                     or max_side < 16):
            raise ConfigError(f"max_side must be a whole number of pixels, at least 16 (or None), got {max_side!r}")
        for name, value in (("min_confidence", min_confidence), ("descend_confidence", descend_confidence),
                            ("part_confidence", part_confidence), ("containment", containment),
                            ("duplicate_iou", duplicate_iou), ("part_pred_iou", part_pred_iou),
                            ("max_part_share", max_part_share), ("crop_margin", crop_margin)):
            if not (isinstance(value, (int, float, np.floating)) and 0.0 <= float(value) <= 1.0):
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        if crop_fill not in FILL_MODES:
            raise ConfigError(f"crop_fill must be one of {', '.join(FILL_MODES)}, got {crop_fill!r}")
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")
        check_device_name(device)
        check_generator_params(generator_params or {})
        self.sam_name = sam
        self.clip_name = clip
        self.device_name = device
        self.taxonomy = load_taxonomy(taxonomy) if taxonomy is not None else None
        self.max_side = max_side
        self.templates = tuple(templates)
        self.negatives = tuple(negatives)
        self.min_confidence = min_confidence
        self.descend_confidence = descend_confidence
        self.part_confidence = part_confidence
        self.crop_margin = crop_margin
        self.crop_fill = crop_fill
        self.containment = containment
        self.duplicate_iou = duplicate_iou
        self.part_pred_iou = part_pred_iou
        self.max_part_share = max_part_share
        # the entry's own generator defaults (tiny-random keeps its masks), then the caller's
        entry_defaults = TINY_GENERATOR_PARAMS if sam == TINY else {}
        self.generator_params = {**entry_defaults, **(generator_params or {})}
        self.download = download
        self.text_cache = text_cache
        self.precision = precision
        self.seed = seed
        self._proposer: MaskProposer | None = None
        self._embedder: RegionEmbedder | None = None
        self._bank: TextBank | None = None
        self._embeddings: OrderedDict[str, Any] = OrderedDict()

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_models(
        cls,
        sam: Any = None,
        clip: Any = None,
        *,
        preprocess: Any = None,
        tokenizer: Any = None,
        device: str = "auto",
        **kwargs: Any,
    ) -> Segmenter:
        """Wrap models you built or fine-tuned yourself.

        Args:
            sam: a ``segment_anything`` ``Sam`` model, or any :class:`MaskProposer`.
            clip: an open_clip model (then give *preprocess* and *tokenizer*), or any :class:`RegionEmbedder`.
            preprocess: the CLIP model's eval transform (``PIL.Image -> tensor``).
            tokenizer: the CLIP model's tokenizer (``list[str] -> tensor``).
            device: where to run the wrapped torch models.
            **kwargs: any other :class:`Segmenter` argument.
        """
        seg = cls(sam="<custom>", clip="<custom>", device=device, **kwargs)
        if sam is not None:
            seg._proposer = seg._wrap_sam(sam)
            seg.sam_name = getattr(seg._proposer, "name", "<custom>")
        if clip is not None:
            seg._embedder = seg._wrap_clip(clip, preprocess, tokenizer)
            seg.clip_name = getattr(seg._embedder, "name", "<custom>")
        return seg

    def _wrap_sam(self, sam: Any) -> MaskProposer:
        if isinstance(sam, MaskProposer):
            return sam
        try:
            from segment_anything.modeling import Sam
        except ImportError as exc:  # pragma: no cover - a dependency
            raise ModelError("segment-anything is not installed: pip install segment-anything") from exc
        if isinstance(sam, Sam):
            from .models.build import resolve_device
            from .models.sam import SamProposer

            return SamProposer(sam, resolve_device(self.device_name), name="custom-sam")
        raise ModelError(f"sam must be a segment_anything Sam model or a MaskProposer, got {type(sam).__name__}")

    def _wrap_clip(self, clip: Any, preprocess: Any, tokenizer: Any) -> RegionEmbedder:
        if isinstance(clip, RegionEmbedder):
            return clip
        if not (hasattr(clip, "encode_image") and hasattr(clip, "encode_text")):
            raise ModelError(f"clip must be an open_clip model or a RegionEmbedder, got {type(clip).__name__}")
        if preprocess is None or tokenizer is None:
            raise ModelError("an open_clip model needs its preprocess and tokenizer: "
                             "Segmenter.from_models(sam, clip, preprocess=..., tokenizer=...)")
        from .models.build import resolve_device
        from .models.clip import ClipEmbedder

        return ClipEmbedder(clip, preprocess, tokenizer, resolve_device(self.device_name), name="custom-clip")

    @property
    def proposer(self) -> MaskProposer:
        """The mask proposer (SAM), built on first use."""
        if self._proposer is None:
            from .models.build import build_proposer, resolve_device

            self._proposer = build_proposer(self.sam_name, resolve_device(self.device_name), download=self.download,
                                            seed=self.seed, precision=self.precision)
        return self._proposer

    @property
    def embedder(self) -> RegionEmbedder:
        """The region embedder (CLIP), built on first use."""
        if self._embedder is None:
            from .models.build import build_embedder, resolve_device

            self._embedder = build_embedder(self.clip_name, resolve_device(self.device_name), download=self.download,
                                            seed=self.seed, precision=self.precision)
        return self._embedder

    @property
    def text_bank(self) -> TextBank:
        if self._bank is None:
            from .weights import home

            self._bank = TextBank(self.embedder, self.templates,
                                  cache_dir=home() / "text-embeddings" if self.text_cache else None)
        return self._bank

    def config(self) -> dict[str, Any]:
        """Every parameter that changes results (for provenance files)."""
        return {
            "sam": self.sam_name, "clip": self.clip_name, "max_side": self.max_side,
            "templates": list(self.templates), "negatives": list(self.negatives),
            "min_confidence": self.min_confidence, "descend_confidence": self.descend_confidence,
            "part_confidence": self.part_confidence, "crop_margin": self.crop_margin, "crop_fill": self.crop_fill,
            "containment": self.containment, "duplicate_iou": self.duplicate_iou,
            "part_pred_iou": self.part_pred_iou, "max_part_share": self.max_part_share,
            "generator_params": dict(self.generator_params),
            "taxonomy": self.taxonomy.name if self.taxonomy else None, "precision": self.precision,
        }

    # -- public API ------------------------------------------------------------------------------------
    def segment(
        self,
        image: ImageInput,
        query: str | Sequence[str],
        *,
        taxonomy: str | Taxonomy | None = None,
        refine: bool = False,
        include_parts: bool = True,
        part_points: int = 0,
        **generator_params: Any,
    ) -> Segmentation:
        """Regions matching a text *query* (``"dog"``, ``"dog, cat"`` or a list), best scores first in ``.best``.

        With a taxonomy, query words that name a taxonomy node match that node and everything below it
        (``"animal"`` returns dogs, cats, puppies; ``"puppy"`` only puppies; ``"head"`` the parts called head);
        other words are scored as free text against the background labels. Without a taxonomy, all words are
        free text. A region inside another match with the same label is not returned twice.

        Args:
            image: path, ``PIL.Image`` or array (see :func:`clipsam.image.load_image`).
            query: comma-separated labels or a list of labels.
            taxonomy: overrides the segmenter's taxonomy for this call.
            refine: re-predict each returned mask with SAM from its own box (sharper edges, same labels).
            include_parts: with a taxonomy, also label parts inside objects (the part-whole tree).
            part_points: with a taxonomy, find parts coarse-to-fine (see :meth:`segment_everything`).
            **generator_params: SAM automatic-generator parameters for this call.

        Returns:
            A :class:`Segmentation` (empty when nothing matches).
        """
        terms = _parse_query(query)
        tax = load_taxonomy(taxonomy) if taxonomy is not None else self.taxonomy
        resolved: list[TaxonomyNode] = []
        free: list[str] = []
        for term in terms:
            hits = tax.find(term) if tax is not None else []
            if hits:
                resolved.extend(hits)
            else:
                free.append(term)
        work = self._prepare(image)
        emb = self._embedding(work)
        cand = self._candidates(work, emb, generator_params)
        feats = self._embed_regions(work, cand.rles)
        matched: dict[int, tuple[LabelDecision, str]] = {}
        if resolved and tax is not None:
            self._label_tree(cand, feats, tax, with_parts=include_parts)
            if part_points > 0:
                cand, feats = self._add_parts(work, emb, cand, feats, part_points)
                self._label_tree(cand, feats, tax, with_parts=include_parts)
            for i, d in enumerate(cand.decisions):
                if d.node is not None and any(d.node.is_a(n) for n in resolved):
                    matched[i] = (d, cand.kinds[i])
        if free:
            flat = Taxonomy.from_labels(free)
            if tax is None or not resolved:
                self._label_tree(cand, feats, flat, with_parts=False)
                decisions = cand.decisions
            else:
                decisions = score_flat(feats, flat.top, self.text_bank, negatives=self.negatives,
                                       min_confidence=self.min_confidence)
            for i, d in enumerate(decisions):
                if i not in matched and d.node is not None and (bool(resolved) or cand.kinds[i] == "object"):
                    matched[i] = (d, "object")
        keep = _drop_nested_same_label(cand.rles, matched, self.containment)
        if refine and keep:
            self._refine(cand, emb, keep)
            feats = feats.copy()  # the returned embeddings describe the refined masks (labels stay as chosen)
            feats[keep] = self._embed_regions(work, [cand.rles[i] for i in keep])
        for i, (d, kind) in matched.items():
            cand.decisions[i], cand.kinds[i] = d, kind
        return self._finish(work, cand, keep, query=tuple(terms), taxonomy=tax, feats=feats)

    def segment_everything(
        self,
        image: ImageInput,
        *,
        taxonomy: str | Taxonomy | None = None,
        label: bool = True,
        include_parts: bool = True,
        part_points: int = 0,
        with_embeddings: bool = False,
        **generator_params: Any,
    ) -> Segmentation:
        """Every region SAM finds, nested into a part-whole tree and labelled with the taxonomy.

        Regions that match no label are kept as ``unknown`` objects (``unknown part`` inside a labelled
        object). Without a taxonomy (here or on the segmenter), or with ``label=False``, regions are returned
        unlabelled and CLIP is not run.

        Args:
            with_embeddings: also compute the regions' CLIP embeddings when not labelling (for search).
            part_points: coarse-to-fine: after labelling, prompt SAM with up to this many points inside each
                labelled object (reusing the image embedding) to find its parts at a finer level; 0 = off.
            generator_params: SAM automatic-generator parameters, passed through (``points_per_side``,
                ``points_per_batch``, ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``,
                ``crop_n_layers``, …).
        """
        tax = load_taxonomy(taxonomy) if taxonomy is not None else self.taxonomy
        work = self._prepare(image)
        emb = self._embedding(work)
        cand = self._candidates(work, emb, generator_params)
        feats = None
        if label and tax is not None:
            feats = self._embed_regions(work, cand.rles)
            self._label_tree(cand, feats, tax, with_parts=include_parts)
            if part_points > 0:
                cand, feats = self._add_parts(work, emb, cand, feats, part_points)
                self._label_tree(cand, feats, tax, with_parts=include_parts)
        else:
            cand.kinds = ["unknown"] * len(cand.rles)
            if with_embeddings:
                feats = self._embed_regions(work, cand.rles)
        return self._finish(work, cand, list(range(len(cand.rles))), taxonomy=tax if label else None,
                            labelled=label and tax is not None, feats=feats)

    def segment_prompt(
        self,
        image: ImageInput,
        *,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask: Any = None,
        multimask: bool | None = None,
    ) -> Segmentation:
        """Masks for clicks, a box, a prior mask, or any combination, best (highest predicted IoU) first.

        Args:
            points: ``(N, 2)`` point coordinates ``(x, y)`` in original-image pixels.
            labels: ``(N,)`` 1 for a positive (foreground) click, 0 for a negative one; default all 1.
            box: ``(x0, y0, x1, y1)`` in original-image pixels.
            mask: low-resolution logits from an earlier call's ``low_res_logits[i]`` (refines that mask).
            multimask: return SAM's 3 candidate masks (ambiguity-aware) or 1. Default: 3 for a single click
                with nothing else, else 1, as SAM's authors recommend.

        Returns:
            A :class:`Segmentation` of kind ``prompt`` regions, ``regions[0]`` the best, with
            ``low_res_logits`` for feeding back as ``mask=``. The image embedding is computed once per image
            and reused by every later prompt on the same image.
        """
        work = self._prepare(image)
        h, w = work.original_size
        pts, lbls, bx = _validate_prompts(points, labels, box, (h, w))
        if pts is None and bx is None and mask is None:
            raise PromptError("segment_prompt needs at least one of points=, box= or mask=")
        if multimask is None:
            multimask = pts is not None and len(pts) == 1 and bx is None and mask is None
        sy, sx = work.scale
        scale = np.asarray([sx, sy], dtype=np.float64)
        emb = self._embedding(work)
        out = self.proposer.predict(
            emb,
            point_coords=None if pts is None else pts * scale,
            point_labels=lbls,
            box=None if bx is None else bx * np.concatenate([scale, scale]),
            mask_input=mask,
            multimask_output=bool(multimask),
        )
        regions = []
        for i in range(len(out.masks)):
            rle = M.resize(M.encode(out.masks[i]), work.original_size)  # type: ignore[arg-type]
            regions.append(Region(id=i, rle=rle, bbox_xywh=M.bbox_xywh(rle), area=M.area(rle), kind="prompt",
                                  predicted_iou=float(out.iou_predictions[i]), stability_score=1.0))
        return Segmentation(image_size=work.original_size, regions=tuple(regions), image_path=work.path,
                            models=self._model_names(), low_res_logits=out.low_res_logits)

    # -- pipeline steps --------------------------------------------------------------------------------
    def _model_names(self) -> dict[str, str]:
        return {"sam": self.sam_name, "clip": self.clip_name}

    def _prepare(self, image: ImageInput) -> _Work:
        pixels = load_image(image)
        work = fit_long_side(pixels, self.max_side)
        key = hashlib.sha1(work.tobytes()).hexdigest() + f":{work.shape}"
        path = str(image) if isinstance(image, (str,)) or hasattr(image, "__fspath__") else None
        log.debug("image %s: %s -> processing %s", source_name(image), pixels.shape, work.shape)
        return _Work(original_size=(int(pixels.shape[0]), int(pixels.shape[1])), pixels=work, key=key, path=path)

    def _embedding(self, work: _Work) -> Any:
        """The proposer's image embedding, computed once per image (small LRU cache)."""
        if work.key in self._embeddings:
            self._embeddings.move_to_end(work.key)
            return self._embeddings[work.key]
        emb = self.proposer.embed(work.pixels)
        self._embeddings[work.key] = emb
        while len(self._embeddings) > _EMBED_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return emb

    def _candidates(self, work: _Work, emb: Any, params: dict[str, Any]) -> _Candidates:
        merged = {**self.generator_params, **check_generator_params(params)}
        props = self.proposer.generate(work.pixels, emb, **merged)
        rles = [p.rle for p in props]
        quality = [p.predicted_iou * p.stability_score for p in props]
        keep = T.dedupe(rles, quality, self.duplicate_iou)
        rles = [rles[i] for i in keep]
        order = T.canonical_order(rles)
        rles = [rles[i] for i in order]
        piou = np.asarray([props[keep[i]].predicted_iou for i in order], dtype=np.float64)
        stab = np.asarray([props[keep[i]].stability_score for i in order], dtype=np.float64)
        parents = T.build_parents(rles, self.containment)
        n = len(rles)
        log.info("%d proposals -> %d regions after merging duplicates", len(props), n)
        return _Candidates(rles, piou, stab, parents, [LabelDecision(None)] * n, ["unknown"] * n)

    def _embed_regions(self, work: _Work, rles: Sequence[M.RLE], batch: int = 64) -> np.ndarray:
        """CLIP embeddings of every region's masked crop, ``(N, D)``; crops are made batch by batch."""
        emb = self.embedder
        out = []
        for start in range(0, len(rles), batch):
            crops = [crop_region(work.pixels, M.decode(r), M.bbox_xywh(r), size=emb.image_size,
                                 margin=self.crop_margin, fill=self.crop_fill) for r in rles[start:start + batch]]
            out.append(emb.embed_images(crops))
        if not out:
            return np.zeros((0, 1), dtype=np.float32)
        return np.concatenate(out)

    def _label_tree(self, cand: _Candidates, feats: np.ndarray, tax: Taxonomy, *, with_parts: bool) -> None:
        """Label regions top-down through the containment tree (parents before children).

        Outside labelled objects a region is labelled as an object (or unknown). Inside a labelled object it is
        labelled among that object's parts, unless another object category beats every part (an object lying
        on top of another), else it is an ``unknown part``.
        """
        n = len(cand.rles)
        if n == 0:
            return
        bank = self.text_bank
        objects = label_hierarchical(feats, tax, bank, negatives=self.negatives, min_confidence=self.min_confidence,
                                     descend_confidence=self.descend_confidence)
        decisions: list[LabelDecision] = [LabelDecision(None)] * n
        kinds = ["unknown"] * n
        for i in range(n):  # canonical order: every parent precedes its children
            owner = self._owning_object(i, cand.parents, kinds)
            if owner is None:
                decisions[i] = objects[i]
                kinds[i] = "object" if objects[i].node is not None else "unknown"
                continue
            whole = decisions[owner].node
            assert whole is not None
            decisions[i], kinds[i] = self._part_or_object(feats[i:i + 1], whole, decisions[owner], tax, with_parts)
        cand.decisions, cand.kinds = decisions, kinds

    @staticmethod
    def _owning_object(i: int, parents: np.ndarray, kinds: list[str]) -> int | None:
        j = int(parents[i])
        while j >= 0:
            if kinds[j] == "object":
                return j
            j = int(parents[j])
        return None

    def _part_or_object(self, feat: np.ndarray, whole: TaxonomyNode, whole_decision: LabelDecision, tax: Taxonomy,
                        with_parts: bool) -> tuple[LabelDecision, str]:
        parts = whole.all_parts() if with_parts else []
        top_of_whole = whole.path[0]
        rivals = [n for n in tax.top if n.name != top_of_whole]
        candidates = parts + rivals
        if not candidates:
            return LabelDecision(None), "unknown part"
        d = score_flat(feat, candidates, self.text_bank, negatives=self.negatives, min_confidence=0.0)[0]
        node = d.node
        if node is None:
            return LabelDecision(None, (), d.best_guess, d.best_guess_score), "unknown part"
        if node.is_part:
            if d.score < self.part_confidence:
                return LabelDecision(None, (), node, d.score), "unknown part"
            owner = node.object_node()
            scores = list(whole_decision.path_scores[:len(owner.path)])
            scores += [d.score] * (len(node.path) - len(scores))
            return LabelDecision(node, tuple(scores), node, d.score), "part"
        if d.score < self.min_confidence:
            return LabelDecision(None, (), node, d.score), "unknown part"
        return descend(feat, [d], self.text_bank, descend_confidence=self.descend_confidence)[0], "object"

    def _add_parts(self, work: _Work, emb: Any, cand: _Candidates, feats: np.ndarray,
                   points_per_object: int) -> tuple[_Candidates, np.ndarray]:
        """Coarse-to-fine: prompt SAM at points inside each labelled object and add the masks that lie inside it
        (and are clearly smaller) as new candidates; the tree is rebuilt over old and new regions together."""
        new_rles: list[M.RLE] = []
        new_iou: list[float] = []
        for i, kind in enumerate(cand.kinds):
            if kind != "object":
                continue
            mask = M.decode(cand.rles[i])
            area = int(mask.sum())
            for x, y in _points_inside(mask, points_per_object):
                out = self.proposer.predict(emb, point_coords=np.asarray([[x, y]], dtype=np.float64),
                                            point_labels=np.asarray([1]), multimask_output=True)
                for m, q in zip(out.masks, out.iou_predictions, strict=True):
                    inside = int((m & mask).sum())
                    if 0 < m.sum() <= self.max_part_share * area and inside >= self.containment * m.sum() \
                            and q >= self.part_pred_iou:
                        new_rles.append(M.encode(m))  # type: ignore[arg-type]
                        new_iou.append(float(q))
        if not new_rles:
            return cand, feats
        rles = list(cand.rles) + new_rles
        piou = np.concatenate([cand.predicted_iou, new_iou])
        stab = np.concatenate([cand.stability, np.ones(len(new_rles))])  # prompted masks: no stability score
        keep = T.dedupe(rles, piou * stab, self.duplicate_iou)
        order = T.canonical_order([rles[k] for k in keep])
        idx = [int(keep[o]) for o in order]
        rles = [rles[k] for k in idx]
        added = [k for k in idx if k >= len(cand.rles)]
        extra = self._embed_regions(work, [rles[idx.index(k)] for k in added])
        row = {k: j for j, k in enumerate(added)}
        new_feats = np.stack([feats[k] if k < len(cand.rles) else extra[row[k]] for k in idx]).astype(np.float32)
        log.info("coarse-to-fine: %d part masks prompted, %d new regions", len(new_rles), len(added))
        n = len(rles)
        merged = _Candidates(rles, piou[idx], stab[idx], T.build_parents(rles, self.containment),
                             [LabelDecision(None)] * n, ["unknown"] * n)
        return merged, new_feats

    def _refine(self, cand: _Candidates, emb: Any, keep: Sequence[int]) -> None:
        for i in keep:
            x, y, w, h = M.bbox_xywh(cand.rles[i])
            out = self.proposer.predict(emb, box=np.asarray([x, y, x + w, y + h], dtype=np.float64),
                                        multimask_output=False)
            if out.masks[0].any():
                cand.rles[i] = M.encode(out.masks[0])  # type: ignore[assignment]
                cand.predicted_iou[i] = float(out.iou_predictions[0])

    def _finish(self, work: _Work, cand: _Candidates, keep: Sequence[int], *, query: tuple[str, ...] = (),
                taxonomy: Taxonomy | None = None, labelled: bool = True,
                feats: np.ndarray | None = None) -> Segmentation:
        keep_set = set(int(i) for i in keep)
        regions = []
        for i in sorted(keep_set):
            rle = M.resize(cand.rles[i], work.original_size)
            parent = int(cand.parents[i])
            while parent >= 0 and parent not in keep_set:
                parent = int(cand.parents[parent])
            d, kind = cand.decisions[i], cand.kinds[i]
            if not labelled:
                label, path, scores = None, (), ()
            elif d.node is not None:
                label, path, scores = d.node.name, d.node.path, d.path_scores
            else:
                label, path, scores = kind, (), ()
            regions.append(Region(
                id=i, rle=rle, bbox_xywh=M.bbox_xywh(rle), area=M.area(rle), label=label,
                score=float(d.score if d.node is not None else 0.0), label_path=tuple(path),
                path_scores=tuple(float(s) for s in scores), kind=kind,
                predicted_iou=float(cand.predicted_iou[i]), stability_score=float(cand.stability[i]),
                parent_id=parent if parent >= 0 else None,
            ))
        rows = sorted(keep_set)
        embeddings = feats[rows] if feats is not None and len(rows) and len(feats) == len(cand.rles) else None
        return Segmentation(image_size=work.original_size, regions=tuple(regions), image_path=work.path, query=query,
                            taxonomy=taxonomy.name if taxonomy else None, models=self._model_names(),
                            embeddings=embeddings)


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: Automatic-generator parameters checked here (SAM's own checks are asserts, or divide by zero).
_POSITIVE_INT_PARAMS = ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor")
_UNIT_PARAMS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh",
                "crop_overlap_ratio")


def check_device_name(device: Any) -> None:
    """Refuse a device string that is none of ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (availability is
    checked when the models load, by :func:`clipsam.models.build.resolve_device`)."""
    if hasattr(device, "type") and not isinstance(device, str):  # a torch.device
        return
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")


def check_generator_params(params: dict[str, Any]) -> dict[str, Any]:
    """*params* itself, after refusing values SAM's generator would crash on (``points_per_side=0`` …)."""
    for key in _POSITIVE_INT_PARAMS:
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}")
    for key in _UNIT_PARAMS:
        value = params.get(key)
        if value is not None and not (isinstance(value, (int, float, np.floating)) and 0.0 <= float(value) <= 1.0):
            raise ConfigError(f"{key} must be a number in [0, 1], got {value!r}")
    for key in ("crop_n_layers", "min_mask_region_area"):
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise ConfigError(f"{key} must be a whole number >= 0, got {value!r}")
    return params


def _points_inside(mask: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Up to *n* points (x, y) spread over *mask*: a grid over its box, keeping points that fall inside."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0 or n <= 0:
        return []
    side = max(1, int(np.ceil(np.sqrt(n))))
    for _ in range(4):  # densify until enough points land inside a thin or hollow mask
        gx = np.linspace(xs.min(), xs.max(), side + 2)[1:-1]
        gy = np.linspace(ys.min(), ys.max(), side + 2)[1:-1]
        pts = [(float(x) + 0.5, float(y) + 0.5) for y in gy for x in gx if mask[int(y), int(x)]]
        if len(pts) >= n:
            break
        side *= 2
    if len(pts) > n:
        pts = [pts[int(k)] for k in np.linspace(0, len(pts) - 1, n)]
    return pts


def _parse_query(query: str | Sequence[str]) -> list[str]:
    if isinstance(query, str):
        terms = [t.strip() for t in query.split(",")]
    elif isinstance(query, Sequence):
        terms = [str(t).strip() for t in query]
    else:
        raise PromptError(f"query must be a string or a list of strings, got {type(query).__name__}")
    terms = [t for t in dict.fromkeys(terms) if t]
    if not terms:
        raise PromptError("the text query is empty: give one or more labels, e.g. 'dog' or 'dog, cat'")
    return terms


def _validate_prompts(points: Any, labels: Any, box: Any, size_hw: tuple[int, int]):
    h, w = size_hw
    pts = lbls = bx = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1 and pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise PromptError(f"points must be (N, 2) pixel coordinates (x, y), got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise PromptError("points contain NaN or infinity")
        outside = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
        if outside.any():
            raise PromptError(f"point(s) {pts[outside].tolist()} lie outside the {w}x{h} image")
        lbls = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
        if len(lbls) != len(pts):
            raise PromptError(f"{len(pts)} points but {len(lbls)} labels: give one label (1 or 0) per point")
        if not np.isin(lbls, (0, 1)).all():
            raise PromptError(f"point labels must be 1 (foreground) or 0 (background), got {lbls.tolist()}")
        lbls = lbls.astype(np.int64)
    elif labels is not None:
        raise PromptError("labels= given without points=")
    if box is not None:
        bx = np.asarray(box, dtype=np.float64).reshape(-1)
        if bx.shape != (4,) or not np.isfinite(bx).all():
            raise PromptError(f"box must be 4 numbers (x0, y0, x1, y1), got {np.asarray(box).tolist()}")
        if not (bx[0] < bx[2] and bx[1] < bx[3]):
            raise PromptError(f"box {bx.tolist()} must have x0 < x1 and y0 < y1")
        if bx[2] <= 0 or bx[3] <= 0 or bx[0] >= w or bx[1] >= h:
            raise PromptError(f"box {bx.tolist()} lies outside the {w}x{h} image")
        bx = np.clip(bx, 0, [w, h, w, h])
    return pts, lbls, bx


def _drop_nested_same_label(rles: Sequence[M.RLE], matched: dict[int, tuple[LabelDecision, str]],
                            containment: float) -> list[int]:
    """Matched indices, minus any region lying inside another matched region with the same label."""
    idx = sorted(matched)
    if len(idx) < 2:
        return idx
    share = M.contained_share([rles[i] for i in idx])
    keep = []
    for a, i in enumerate(idx):  # canonical order: larger first
        label = matched[i][0].node
        inside = any(share[a, b] >= containment and matched[j][0].node is label
                     for b, j in enumerate(idx[:a]) if j in keep)
        if not inside:
            keep.append(i)
    return keep
