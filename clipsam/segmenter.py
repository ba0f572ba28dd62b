"""The orchestrator: :class:`Segmenter` owns the models (loaded lazily on first use), the per-image embedding cache
and the configuration, and calls the pipeline's stages (:mod:`clipsam.stages`) in order:

prepare -> propose -> nest -> embed -> label -> parts / refine -> assemble.

It only talks to the :class:`~clipsam.models.base.MaskProposer` and :class:`~clipsam.models.base.RegionEmbedder`
interfaces; every labelling rule lives in :mod:`clipsam.stages.label`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .core import tree as T
from .core.config import check_device_name, check_generator_params, check_segmenter_args
from .core.image import ImageInput
from .core.labels import DEFAULT_NEGATIVES, DEFAULT_TEMPLATES, LabelDecision
from .core.regions import Regions
from .core.taxonomy import Taxonomy, load_taxonomy
from .errors import ConfigError
from .models.base import TINY, TINY_GENERATOR_PARAMS, TINY_SAM3, dense_unsupported, is_concept_proposer
from .models.owner import ModelOwner
from .result import Segmentation
from .stages.assemble import assemble, prompt_result
from .stages.embed import embed_regions
from .stages.guide import STRATEGIES, guide_targets, guided_part_candidates, pool_regions, propose_guided
from .stages.label import (
    UNION_MARGIN,
    Labelled,
    LabelPolicy,
    drop_nested_same_label,
    label_tree,
    match_query,
    parse_query,
    resolve_query,
)
from .stages.nest import nest, nest_proposals, propose
from .stages.parts import merge_candidates, part_candidates, refine_masks
from .stages.prepare import EmbeddingCache, Work, prepare
from .stages.prompt import predict_prompt, validate_prompts

log = logging.getLogger(__name__)

#: Default SAM and CLIP registry names.
DEFAULT_SAM = "vit_b"
DEFAULT_CLIP = "ViT-B-16/openai"
#: Images are processed with their long side at most this many pixels; masks come back at full resolution.
DEFAULT_MAX_SIDE = 1024
#: ``Segmenter(speed=...)`` values.
SPEEDS = ("exact", "fast")
#: The generator grid of ``speed="fast"`` (a quarter of SAM's 32x32 decoder prompts) unless the caller sets one.
FAST_GRID: dict[str, Any] = {"points_per_side": 16}
_EMBED_CACHE_SIZE = 4
#: Parameters that must be numbers in [0, 1].
#: How regions are embedded: a masked crop each, or dense features pooled inside each mask.
REGION_FEATURES = ("crops", "pooled")
_UNIT_ARGS = ("min_confidence", "descend_confidence", "part_confidence", "containment", "duplicate_iou",
              "part_pred_iou", "max_part_share", "crop_margin")

__all__ = ["DEFAULT_CLIP", "DEFAULT_MAX_SIDE", "DEFAULT_SAM", "Segmenter", "check_device_name",
           "check_generator_params"]


class Segmenter(ModelOwner):
    """Text-prompted, hierarchical segmentation with SAM proposals and CLIP labels.

    Args:
        sam: SAM registry name (``vit_b``, ``vit_l``, ``vit_h``) or ``tiny-random`` (tests only).
        clip: CLIP registry name (``ViT-B-16/openai`` …) or ``tiny-random``.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        taxonomy: default taxonomy (shipped name, YAML path or :class:`Taxonomy`) for labels and trees.
        max_side: long side of the processing size in pixels (``None``: full resolution). Nesting, crops and labels
            work at this size; SAM sees the original image as stock SAM does.
        full_resolution: give masks at the original resolution from SAM's logits upsampled there, as stock SAM does
            (default; identical to stock's masks); ``False``: the processing-size masks scaled up nearest neighbour
            (faster on large photos, staircase edges).
        templates: prompt templates averaged into each label's text embedding.
        negatives: background labels that compete with real labels, so that "nothing matches" is possible.
        min_confidence: softmax probability a top-level label needs to be accepted (else ``unknown``).
        descend_confidence: probability a child label needs to replace its parent ("dog" -> "puppy").
        part_confidence: probability a part label needs inside a labelled object (else ``unknown part``).
        scoring: ``subtree`` (default: every label in one softmax, a label's probability summed over its subtree,
            after CHiLS) or ``top-down`` (level by level from the top-level names).
        vocabulary: let free text and taxonomy labels compete against clipsam's vocabulary of ~330 object and
            stuff nouns (``everyday`` + ``stuff``), not only the negatives, so a sofa is not the nearest query word.
        union_margin: log-odds by which a region must beat a region containing it on their shared label for the
            container to lose that label (a sofa+cat mask is not "the cat"); ``None`` turns the rule off.
        crop_margin: context around each mask's box in its CLIP crop, as a share of the box's long side.
        crop_fill: how pixels outside the mask are neutralised in crops: ``grey``, ``blur`` or ``none``.
        containment: share of a mask that must lie inside another for it to be its child in the tree.
        duplicate_iou: masks with at least this IoU are merged as one region.
        part_pred_iou: coarse-to-fine part masks need at least this predicted IoU.
        max_part_share: coarse-to-fine part masks may cover at most this share of their object.
        generator_params: defaults for SAM's automatic mask generator (points_per_side, pred_iou_thresh, …).
        region_features: how regions are embedded: ``crops`` (default: one masked crop per region through CLIP) or
            ``pooled`` (dense patch features of the whole image, one CLIP pass, averaged inside each mask; needs an
            embedder with ``dense_features``, else crops are used).
        download: fetch missing weights (else raise a message saying how to import them).
        text_cache: keep text embeddings on disk under ``$CLIPSAM_HOME/text-embeddings``.
        precision: ``fp32`` (default; SAM masks identical to stock) or ``bf16`` (autocast on CUDA: faster,
            masks differ slightly).
        speed: ``exact`` (default: stock SAM's masks) or ``fast`` for approximate masks sooner: unless you set
            ``points_per_side``, a 16x16 point grid instead of SAM's 32x32 (a quarter of the decoder prompts), and on
            CUDA bf16 autocast (``precision="bf16"``). On a CPU this measured 2.2-2.5x faster, each exact mask's best
            match at a mean IoU of 0.94-0.95; an int8 image encoder was measured too and did not pay off there
            (``benchmarks/speed_fast.py``, ``benchmarks/RESULTS.md``).
        seed: seed of the ``tiny-random`` models.
        unknown_sam: with a SAM 3 *sam* (which only finds what it is asked for), the SAM 1 / 2.1 model whose
            automatic masks that no concept claimed join ``segment_everything`` as regions labelled by CLIP (the
            ``unknown`` objects SAM 3 cannot give); ``"auto"``: ``vit_b`` (``tiny-random`` for
            ``tiny-random-sam3``); a :class:`MaskProposer` object; ``None``: concepts only.
    """

    def __init__(
        self,
        sam: str = DEFAULT_SAM,
        clip: str = DEFAULT_CLIP,
        *,
        device: str = "auto",
        taxonomy: str | Taxonomy | None = None,
        max_side: int | None = DEFAULT_MAX_SIDE,
        full_resolution: bool = True,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        negatives: Sequence[str] = DEFAULT_NEGATIVES,
        min_confidence: float = 0.3,
        descend_confidence: float = 0.5,
        part_confidence: float = 0.3,
        scoring: str = "subtree",
        vocabulary: bool = True,
        union_margin: float | None = UNION_MARGIN,
        crop_margin: float = 0.1,
        crop_fill: str = "grey",
        containment: float = T.DEFAULT_CONTAINMENT,
        duplicate_iou: float = T.DEFAULT_DUPLICATE_IOU,
        part_pred_iou: float = 0.5,
        max_part_share: float = 0.8,
        generator_params: dict[str, Any] | None = None,
        region_features: str = "crops",
        download: bool = True,
        text_cache: bool = True,
        precision: str = "fp32",
        speed: str = "exact",
        seed: int = 0,
        unknown_sam: Any = "auto",
    ) -> None:
        args = locals()
        checked = ("max_side", "crop_fill", "precision", "device", "scoring", "union_margin", *_UNIT_ARGS)
        check_segmenter_args(**{k: args[k] for k in checked})
        if speed not in SPEEDS:
            raise ConfigError(f"speed must be one of {', '.join(SPEEDS)}, got {speed!r}")
        self.speed = speed
        if speed == "fast" and precision == "fp32":
            precision = "bf16"  # autocast on CUDA only: CPU runs stay fp32
        if region_features not in REGION_FEATURES:
            raise ConfigError(f"region_features must be one of {', '.join(REGION_FEATURES)}, got {region_features!r}")
        self.region_features = region_features
        self.sam_name, self.clip_name, self.device_name = sam, clip, device
        self.taxonomy = load_taxonomy(taxonomy) if taxonomy is not None else None
        self.max_side = max_side
        self.full_resolution = bool(full_resolution)
        self.templates, self.negatives = tuple(templates), tuple(negatives)
        self.min_confidence, self.descend_confidence = min_confidence, descend_confidence
        self.part_confidence = part_confidence
        self.scoring, self.vocabulary, self.union_margin = scoring, bool(vocabulary), union_margin
        self.crop_margin, self.crop_fill = crop_margin, crop_fill
        self.containment, self.duplicate_iou = containment, duplicate_iou
        self.part_pred_iou, self.max_part_share = part_pred_iou, max_part_share
        # the entry's own generator defaults (tiny-random keeps its masks), then the caller's
        entry_defaults = TINY_GENERATOR_PARAMS if sam == TINY else FAST_GRID if speed == "fast" else {}
        self.generator_params = {**entry_defaults, **check_generator_params(dict(generator_params or {}))}
        self.download, self.text_cache, self.precision, self.seed = download, text_cache, precision, seed
        self._proposer = self._embedder = self._bank = None
        self._unknown_proposer: Any = None
        if unknown_sam is not None and not isinstance(unknown_sam, str):  # a proposer object
            self._unknown_proposer, unknown_sam = unknown_sam, getattr(unknown_sam, "name", "<custom>")
        self.unknown_sam = (TINY if sam == TINY_SAM3 else DEFAULT_SAM) if unknown_sam == "auto" else unknown_sam
        self._unknown_cache = EmbeddingCache(2)
        self._cache = EmbeddingCache(_EMBED_CACHE_SIZE)
        self._dense_cache = EmbeddingCache(2)
        #: what the last segment / segment_everything call did: strategy, decoder prompts, CLIP passes
        self.last_stats: dict[str, Any] = {}

    # -- models ------------------------------------------------------------------------------------------
    @classmethod
    def from_models(cls, sam: Any = None, clip: Any = None, *, preprocess: Any = None, tokenizer: Any = None,
                    device: str = "auto", **kwargs: Any) -> Segmenter:
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
        seg.adopt(sam, clip, preprocess=preprocess, tokenizer=tokenizer)
        return seg

    @property
    def is_concept_model(self) -> bool:
        """*sam* is SAM 3 (finds every instance of a phrase) rather than a point-prompted SAM."""
        if self._proposer is not None:
            return is_concept_proposer(self._proposer)
        if self.sam_name == TINY_SAM3:
            return True
        from . import weights

        entry = weights.REGISTRY.get(self.sam_name)
        return bool(entry is not None and entry.extra.get("backend") == "sam3")

    @property
    def unknown_proposer(self) -> Any:
        """The SAM 1 / 2.1 model whose automatic masks complete a SAM 3 result (``unknown_sam``), built on first use."""
        if self._unknown_proposer is None and self.unknown_sam is None:
            raise ConfigError("this SAM 3 segmenter has unknown_sam=None: it only finds the concepts it is asked "
                              "for; give unknown_sam='vit_b' (or another SAM) for prompt-free masks")
        return self._built("_unknown_proposer", "build_proposer", self.unknown_sam)

    @property
    def policy(self) -> LabelPolicy:
        return LabelPolicy(self.negatives, self.min_confidence, self.descend_confidence, self.part_confidence,
                           self.scoring, self.vocabulary, self.union_margin)

    def config(self) -> dict[str, Any]:
        """Every parameter that changes results (for provenance files)."""
        keys = ("max_side", "full_resolution", "min_confidence", "descend_confidence", "part_confidence", "scoring",
                "vocabulary", "union_margin", "crop_margin", "crop_fill", "region_features",
                "containment", "duplicate_iou", "part_pred_iou", "max_part_share", "precision", "speed")
        return {"sam": self.sam_name, "clip": self.clip_name, **{k: getattr(self, k) for k in keys},
                "templates": list(self.templates), "negatives": list(self.negatives),
                "generator_params": dict(self.generator_params),
                "taxonomy": self.taxonomy.name if self.taxonomy else None,
                **({"unknown_sam": self.unknown_sam} if self.is_concept_model else {})}

    # -- public API ------------------------------------------------------------------------------------
    def segment(self, image: ImageInput, query: str | Sequence[str], *, taxonomy: str | Taxonomy | None = None,
                refine: bool = False, include_parts: bool = True, part_points: int = 0, strategy: str = "grid",
                **generator_params: Any) -> Segmentation:
        """Regions matching a text *query* (``"dog"``, ``"dog, cat"`` or a list), best scores first in ``.best``.

        With a taxonomy, query words that name a taxonomy node match that node and everything below it
        (``"animal"`` returns dogs, cats, puppies; ``"puppy"`` only puppies; ``"head"`` the parts called head);
        other words are free text, scored against the background labels, clipsam's vocabulary of object and stuff
        nouns and the taxonomy's labels (the word's own synonyms, hypernyms and hyponyms excepted). Without a
        taxonomy, all words are free text. A region inside another match with the same label is not returned
        twice: the whole represents the object.

        Args:
            image: path, ``PIL.Image`` or array (see :func:`clipsam.image.load_image`).
            query: comma-separated labels or a list of labels.
            taxonomy: overrides the segmenter's taxonomy for this call.
            refine: re-predict each returned mask with SAM from its own box (sharper edges); the refined masks are
                nested and labelled again, so labels, parents and ids describe the masks returned.
            include_parts: with a taxonomy, also label parts inside objects (the part-whole tree).
            part_points: with a taxonomy, find parts coarse-to-fine (see :meth:`segment_everything`).
            strategy: ``grid`` (default: SAM's full point grid, every mask scored) or ``guided`` (CLIP's dense
                relevance map for the query places a few SAM prompts -- the peak and box of each high-relevance
                region -- then the same scoring; far fewer decoder prompts; falls back to the grid when the embedder
                has no dense features).
            **generator_params: SAM automatic-generator parameters for this call (grid strategy).

        Returns:
            A :class:`Segmentation` (empty when nothing matches).
        """
        terms = parse_query(query)
        check_strategy(strategy)
        tax = load_taxonomy(taxonomy) if taxonomy is not None else self.taxonomy
        resolved, free = resolve_query(terms, tax)
        if self.is_concept_model:
            self._check_concept_options(strategy, refine, part_points)
            return self._concept_query(image, terms, tax, resolved, free, include_parts)
        guide = guide_targets(tax, resolved, free, self.policy) if strategy == "guided" else None
        work, emb, regions = self._candidates(image, generator_params, guide)
        feats = self._embed(work, regions.rles)
        query_args = (work, emb, tax, bool(resolved), resolved, free, include_parts)
        regions, feats, matched, keep = self._match(*query_args, regions, feats, part_points)
        if refine and keep:  # refined masks are nested, embedded and labelled anew: labels describe the new masks
            regions, feats = refine_masks(work.sam(self.proposer), emb, regions, keep, feats,
                                          lambda r: self._embed(work, r))
            regions = nest(regions.rles, regions.predicted_iou, regions.stability_score,
                           duplicate_iou=self.duplicate_iou, containment=self.containment)
            regions, feats, matched, keep = self._match(*query_args, regions, feats[regions.ids], 0)
        chosen = Labelled.from_matches(matched, len(regions))
        return assemble(work, regions, chosen, keep, query=tuple(terms), taxonomy=tax, feats=feats,
                        models=self._model_names())

    def segment_everything(self, image: ImageInput, *, taxonomy: str | Taxonomy | None = None, label: bool = True,
                           include_parts: bool = True, part_points: int = 0, with_embeddings: bool = False,
                           strategy: str = "grid", **generator_params: Any) -> Segmentation:
        """Every region SAM finds, nested into a part-whole tree and labelled with the taxonomy.

        Regions that match no label are kept as ``unknown`` objects (``unknown part`` inside a labelled
        object). Without a taxonomy (here or on the segmenter), or with ``label=False``, regions are returned
        unlabelled and CLIP is not run.

        Args:
            with_embeddings: also compute the regions' CLIP embeddings when not labelling (for search).
            part_points: coarse-to-fine: after labelling, prompt SAM with up to this many points inside each
                labelled object (reusing the image embedding) to find its parts at a finer level; 0 = off.
            strategy: ``grid`` (default) or ``guided``, level by level: the top-level categories' relevance maps
                place SAM prompts for objects, then each labelled object's parts' maps (inside the object) place
                prompts for its parts (see :meth:`segment`; needs a taxonomy).
            generator_params: SAM automatic-generator parameters, passed through (``points_per_side``,
                ``points_per_batch``, ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``,
                ``crop_n_layers``, …).
        """
        check_strategy(strategy)
        tax = load_taxonomy(taxonomy) if taxonomy is not None else self.taxonomy
        if self.is_concept_model:
            self._check_concept_options(strategy, False, part_points)
            return self._concept_everything(image, tax if label else None, include_parts, with_embeddings,
                                            generator_params)
        guide = None
        if strategy == "guided":
            if tax is None or not label:
                raise ConfigError("strategy='guided' needs a taxonomy to label with: its top-level categories "
                                  "guide the prompts (or use segment() with a query)")
            guide = ([[n.prompts for n in top.walk() if not n.is_part] for top in tax.top],
                     self.policy.competitors(tax))
        work, emb, regions = self._candidates(image, generator_params, guide)
        feats, labelled = None, None
        if label and tax is not None:
            feats = self._embed(work, regions.rles)
            regions, feats, labelled = self._label(work, emb, regions, feats, tax, include_parts, part_points,
                                                   guided=strategy == "guided")
        elif with_embeddings:
            feats = self._embed(work, regions.rles)
        keep = labelled.kept() if labelled is not None else range(len(regions))
        return assemble(work, regions, labelled, keep, taxonomy=tax if label else None, feats=feats,
                        models=self._model_names())

    def segment_prompt(self, image: ImageInput, *, points: Any = None, labels: Any = None, box: Any = None,
                       mask: Any = None, multimask: bool | None = None) -> Segmentation:
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
        prompts = validate_prompts(points, labels, box, work.original_size)  # before SAM runs
        emb = self._cache.get(work, self.proposer)
        out = predict_prompt(self.proposer, emb, work, *prompts, mask=mask, multimask=multimask)
        pts, lbls, bx = prompts
        given = {**({"points": pts.tolist(), "labels": lbls.tolist()} if pts is not None else {}),
                 **({"box": bx.tolist()} if bx is not None else {})}
        logits = out.upscale_logits if out.upscale_logits is not None else out.low_res_logits
        full = self.proposer.upscale(emb, logits) if work.embeds_original(self.proposer) else None
        return prompt_result(work, out.masks, out.iou_predictions, out.low_res_logits, self._model_names(), given,
                             full_rles=full)

    # -- stages --------------------------------------------------------------------------------------------
    def _prepare(self, image: ImageInput) -> Work:
        return prepare(image, self.max_side, self.full_resolution)

    def _model_names(self) -> dict[str, str]:
        return {"sam": self.sam_name, "clip": self.clip_name}

    def _candidates(self, image: ImageInput, params: dict[str, Any], guide: tuple[list, list] | None = None
                    ) -> tuple[Work, Any, Regions]:
        """prepare -> propose (the point grid, or prompts guided by relevance maps for *guide*'s targets) -> nest."""
        t0 = time.perf_counter()
        work = self._prepare(image)
        emb = self._cache.get(work, self.proposer)
        t1 = time.perf_counter()
        props = self._guided(work, emb, *guide) if guide is not None else None
        if props is None:
            params = {**self.generator_params, **check_generator_params(params)}
            sam = work.sam(self.proposer)
            props = propose(sam, work.input_for(sam), emb, params)
            side = params.get("points_per_side", 32)
            self.last_stats = {"strategy": "grid", "decoder_prompts": int(side) ** 2 if side else None}
        t2 = time.perf_counter()
        regions = nest_proposals(props, duplicate_iou=self.duplicate_iou, containment=self.containment)
        self.last_stats["seconds"] = {"prepare_and_embed": round(t1 - t0, 4), "propose": round(t2 - t1, 4),
                                      "nest": round(time.perf_counter() - t2, 4)}
        return work, emb, regions

    def _dense(self, work: Work) -> np.ndarray:
        """The embedder's dense patch features of the image (one CLIP pass, cached per image)."""
        return self._dense_cache.get(work, _DenseAdapter(self.embedder))

    def _guided(self, work: Work, emb: Any, targets: list, competitors: list) -> list[Any] | None:
        """SAM's masks for the seeds of every target's relevance map, or ``None`` (use the grid) when the embedder
        has no dense features."""
        why = dense_unsupported(self.embedder)
        if why:
            log.info("guided prompts unavailable (%s): using the point grid", why)
            return None
        props, self.last_stats = propose_guided(work.sam(self.proposer), emb, self._dense(work), self.text_bank,
                                                targets, competitors, work.pixels.shape[:2])
        return props

    def _embed(self, work: Work, rles: Sequence[Any]) -> np.ndarray:
        if self.region_features == "pooled" and len(rles) and dense_unsupported(self.embedder) is None:
            return pool_regions(self._dense(work), rles)
        return embed_regions(work.pixels, rles, self.embedder, margin=self.crop_margin, fill=self.crop_fill)

    def _match(self, work: Work, emb: Any, tax: Taxonomy | None, label: bool, resolved: list[Any], free: list[str],
               include_parts: bool, regions: Regions, feats: np.ndarray, part_points: int) -> tuple[Any, ...]:
        """label (when the query names taxonomy nodes) -> match the query -> drop matches nested in a same-label
        match: (regions, feats, matched, keep). Free text competes against *tax*'s labels either way."""
        labelled = None
        if label and tax is not None:
            regions, feats, labelled = self._label(work, emb, regions, feats, tax, include_parts, part_points)
        matched = match_query(feats, regions.parent, resolved, free, self.text_bank, self.policy, labelled, tax,
                              rles=regions.rles, embed=lambda r: self._embed(work, r))
        return regions, feats, matched, drop_nested_same_label(regions.rles, matched, self.containment)

    def _label(self, work: Work, emb: Any, regions: Regions, feats: np.ndarray, tax: Taxonomy, with_parts: bool,
               part_points: int, guided: bool = False) -> tuple[Regions, np.ndarray, Labelled]:
        """label, then prompt for parts inside labelled objects -- guided by the parts' relevance maps (*guided*)
        and/or at *part_points* points each -- re-nest and label again."""
        labelled = label_tree(feats, regions.parent, tax, self.text_bank, self.policy, with_parts=with_parts,
                              rles=regions.rles, embed=lambda r: self._embed(work, r))
        guided = guided and with_parts and dense_unsupported(self.embedder) is None
        if part_points <= 0 and not guided:
            return regions, feats, labelled
        objects = [i for i, k in enumerate(labelled.kinds) if k == "object"]
        limits = {"containment": self.containment, "max_part_share": self.max_part_share,
                  "min_pred_iou": self.part_pred_iou}
        rles, ious = [], []
        if guided:
            rles, ious, calls = guided_part_candidates(
                work.sam(self.proposer), emb, self._dense(work), self.text_bank, regions,
                [(i, labelled.decisions[i].node) for i in objects], self.negatives, **limits)
            self.last_stats["decoder_prompts"] = self.last_stats.get("decoder_prompts", 0) + calls
        if part_points > 0:
            more, more_iou = part_candidates(work.sam(self.proposer), emb, regions, objects, part_points, **limits)
            rles, ious = rles + more, ious + more_iou
        merged, feats = merge_candidates(regions, feats, rles, ious, embed=lambda r: self._embed(work, r),
                                         containment=self.containment, duplicate_iou=self.duplicate_iou)
        if merged is regions:
            return regions, feats, labelled
        return merged, feats, label_tree(feats, merged.parent, tax, self.text_bank, self.policy,
                                         with_parts=with_parts, rles=merged.rles, embed=lambda r: self._embed(work, r))


    # -- SAM 3: concepts -----------------------------------------------------------------------------------
    def _check_concept_options(self, strategy: str, refine: bool, part_points: int) -> None:
        if strategy != "grid":
            raise ConfigError(f"strategy={strategy!r} places point prompts for SAM 1 / 2.1; {self.sam_name} is asked "
                              "for the concepts directly")
        if refine or part_points:
            raise ConfigError(f"refine and part_points prompt SAM with points and boxes, which {self.sam_name} does "
                              "not take; its parts are asked as '<whole> <part>' concepts")

    def _find(self, work: Work, queries: Sequence[Any]) -> list[tuple[int, Any, float]]:
        """``(query index, mask, score)`` for every instance SAM 3 finds for *queries* (vision features once)."""
        if not queries:
            return []
        emb = self._cache.get(work, self.proposer)
        found = self.proposer.find(emb, [q.phrase for q in queries])
        self.last_stats["concept_queries"] = self.last_stats.get("concept_queries", 0) + len(queries)
        return [(k, h.rle, float(h.score)) for k, hits in enumerate(found) for h in hits]

    def _concepts(self, work: Work, queries: Sequence[Any], with_parts: bool) -> tuple[list, list, list]:
        """Objects for *queries* and (*with_parts*) their parts: ``(rles, decisions, kinds)``."""
        from .stages.concepts import decide, merge_hits, part_queries, place_parts

        self.last_stats = {"strategy": "concepts", "concept_queries": 0}
        clusters = merge_hits(self._find(work, queries))
        objects = []
        for c in clusters:
            d = decide(c, queries, min_confidence=self.min_confidence, descend_confidence=self.descend_confidence)
            if d.node is not None:
                objects.append((c.rle, d))
        parts: list = []
        if with_parts and objects:
            asked: dict[str, Any] = {}
            for _, d in objects:
                for q in part_queries(d.node):
                    asked.setdefault(q.node.path_str, q)
            pq = list(asked.values())
            hits = [(pq[k], rle, score) for k, rle, score in self._find(work, pq)]
            parts = place_parts(objects, hits, containment=self.containment, max_part_share=self.max_part_share,
                                min_confidence=self.part_confidence)
        rles = [r for r, _ in objects] + [r for _, r, _ in parts]
        decisions = [d for _, d in objects] + [d for _, _, d in parts]
        return rles, decisions, ["object"] * len(objects) + ["part"] * len(parts)

    def _nest_labelled(self, rles: list, decisions: list, kinds: list) -> tuple[Regions, Labelled]:
        regions = nest(rles, [d.score for d in decisions], np.ones(len(rles)), duplicate_iou=self.duplicate_iou,
                       containment=self.containment)
        ids = [int(i) for i in regions.ids]
        return regions, Labelled(tuple(decisions[i] for i in ids), tuple(kinds[i] for i in ids))

    def _concept_query(self, image: ImageInput, terms: list[str], tax: Taxonomy | None, resolved: list[Any],
                       free: list[str], include_parts: bool) -> Segmentation:
        from .core.vocabulary import query_taxonomy
        from .stages.concepts import ConceptQuery, object_queries

        work = self._prepare(image)
        objects = sorted({id(n.object_node()): n.object_node() for n in resolved}.values(), key=lambda n: n.path)
        queries = object_queries(objects)
        flat = query_taxonomy(free) if free else None
        if flat is not None:
            queries += [ConceptQuery(n, n.name) for n in flat.top]
        wants_parts = include_parts and any(n.is_part for n in resolved)
        rles, decisions, kinds = self._concepts(work, queries, wants_parts)
        regions, labelled = self._nest_labelled(rles, decisions, kinds)
        targets = list(resolved) + (list(flat.top) if flat is not None else [])
        matched = {i: (d, k) for i, (d, k) in enumerate(zip(labelled.decisions, labelled.kinds, strict=True))
                   if d.node is not None and any(d.node.is_a(t) for t in targets)}
        keep = drop_nested_same_label(regions.rles, matched, self.containment)
        return assemble(work, regions, Labelled.from_matches(matched, len(regions)), keep, query=tuple(terms),
                        taxonomy=tax, models=self._model_names())

    def _concept_everything(self, image: ImageInput, tax: Taxonomy | None, include_parts: bool,
                            with_embeddings: bool, generator_params: dict[str, Any]) -> Segmentation:
        """Every object label of *tax* asked as a concept; the automatic masks of ``unknown_sam`` that no concept
        claimed join them, labelled by CLIP; then one containment tree over all."""
        from .stages.concepts import claimed, object_queries, reconcile

        work = self._prepare(image)
        rles, decisions, kinds = self._concepts(work, object_queries(tax.top), include_parts) if tax else ([], [], [])
        if self.unknown_sam is not None:
            params = {**(TINY_GENERATOR_PARAMS if self.unknown_sam == TINY else {}), **self.generator_params,
                      **check_generator_params(generator_params)}
            emb = self._unknown_cache.get(work, self.unknown_proposer)
            sam = work.sam(self.unknown_proposer)
            rest = nest_proposals(propose(sam, work.input_for(sam), emb, params),
                                  duplicate_iou=self.duplicate_iou, containment=self.containment)
            free_rows = np.flatnonzero(~claimed(rest.rles, rles))
            if len(free_rows):
                rest = rest.take(free_rows)
                if tax is not None:
                    labelled = label_tree(self._embed(work, rest.rles), rest.parent, tax, self.text_bank, self.policy,
                                          with_parts=include_parts, rles=rest.rles,
                                          embed=lambda r: self._embed(work, r))
                    if labelled.merged:  # near-duplicates of their owner are not returned
                        keep = labelled.kept()
                        rest = rest.take(keep)
                        labelled = Labelled(tuple(labelled.decisions[i] for i in keep),
                                            tuple(labelled.kinds[i] for i in keep))
                    extra = reconcile(rles, decisions, rest.rles, list(zip(labelled.decisions, labelled.kinds,
                                                                           strict=True)),
                                      containment=self.containment)
                else:
                    extra = [(LabelDecision(None), "unknown")] * len(rest)
                rles += list(rest.rles)
                decisions += [d for d, _ in extra]
                kinds += [k for _, k in extra]
        regions, labelled = self._nest_labelled(rles, decisions, kinds)
        feats = self._embed(work, regions.rles) if with_embeddings and len(regions) else None
        return assemble(work, regions, labelled if tax is not None else None, range(len(regions)), taxonomy=tax,
                        feats=feats, models=self._model_names())


class _DenseAdapter:
    """An embedder's ``dense_features`` under the name :class:`EmbeddingCache` calls."""

    def __init__(self, embedder: Any) -> None:
        self.embed = embedder.dense_features


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
