"""The orchestrator: :class:`Segmenter` resolves the models (loaded lazily on first use), the caches and the
configuration (:class:`~clipsam.core.settings.Settings`), and hands each request to the pipeline its backend
declares (:mod:`clipsam.models.backends`):

* the point pipeline (:mod:`clipsam.pipelines.points`, SAM 1 and 2.1): prepare -> propose (point grid or guided
  prompts) -> nest -> embed -> label -> parts / refine -> assemble;
* the concept pipeline (:mod:`clipsam.pipelines.concepts`, SAM 3): concepts -> decide -> parts -> unknown masks ->
  nest -> assemble.

Every labelling rule lives in :mod:`clipsam.stages.label`. A segmenter is safe to share between threads: its
settings are frozen, its caches are keyed by model and image and locked, each call's pipeline holds that call's
statistics, and the SAM adapters lock their predictor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from .core.config import check_device_name, check_generator_params
from .core.image import ImageInput
from .core.settings import DEFAULT_MAX_SIDE, FAST_GRID, REGION_FEATURES, RUNTIMES, SPEEDS, Settings
from .core.taxonomy import Taxonomy, load_taxonomy
from .errors import ConfigError
from .models.backends import TINY_SAM2, backend_for, backend_of, check_options
from .models.base import TINY, TINY_GENERATOR_PARAMS, TINY_SAM3
from .models.owner import ModelOwner
from .pipelines.concepts import ConceptPipeline
from .pipelines.points import PointPipeline
from .pipelines.requests import Caches, Everything, Query
from .result import Segmentation
from .stages.guide import STRATEGIES
from .stages.label import LabelPolicy, parse_query, resolve_query
from .stages.prepare import Work, prepare

log = logging.getLogger(__name__)

#: Default SAM and CLIP registry names.
DEFAULT_SAM = "vit_b"
DEFAULT_CLIP = "ViT-B-16/openai"
PIPELINES = {"points": PointPipeline, "concepts": ConceptPipeline}

__all__ = ["DEFAULT_CLIP", "DEFAULT_MAX_SIDE", "DEFAULT_SAM", "FAST_GRID", "REGION_FEATURES", "SPEEDS", "Segmenter",
           "check_device_name", "check_generator_params"]


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
            CUDA bf16 autocast (``precision="bf16"``), and with ONNX Runtime (``runtime="onnx"`` or ``"auto"`` on a
            CPU) CLIP's image tower in int8 (dynamic quantisation; text embeddings stay fp32). On a CPU this measured
            2.2-2.5x faster, each exact mask's best match at a mean IoU of 0.94-0.95; an int8 SAM image encoder in
            PyTorch was measured too and did not pay off there (``benchmarks/speed_fast.py``,
            ``benchmarks/onnx_cpu.py``, ``benchmarks/RESULTS.md``).
        runtime: what runs the models' heavy parts: ``torch`` (default), ``onnx`` (ONNX Runtime on a CPU for SAM 1's
            image encoder and mask decoder and CLIP's towers, exported once into ``$CLIPSAM_HOME/onnx``: the same
            masks save float rounding at SAM's threshold, about 1.5x faster end to end on a 2-core CPU; needs
            ``clipsam[onnx]``) or
            ``auto`` (ONNX Runtime for each model that has an export when on a CPU and installed, else PyTorch).
            See :mod:`clipsam.models.onnx`.
        seed: seed of the ``tiny-random`` models.
        unknown_sam: with a SAM 3 *sam* (which only finds what it is asked for), the SAM 1 / 2.1 model whose
            automatic masks that no concept claimed join ``segment_everything`` as regions labelled by CLIP (the
            ``unknown`` objects SAM 3 cannot give); ``"auto"``: ``vit_b`` (``tiny-random`` for
            ``tiny-random-sam3``); a :class:`MaskProposer` object; ``None``: concepts only.
    """

    def __init__(self, sam: str = DEFAULT_SAM, clip: str = DEFAULT_CLIP, *, device: str = "auto",
                 taxonomy: str | Taxonomy | None = None, download: bool = True, text_cache: bool = True,
                 seed: int = 0, unknown_sam: Any = "auto", generator_params: dict[str, Any] | None = None,
                 precision: str = "fp32", speed: str = "exact", runtime: str = "torch", **options: Any) -> None:
        check_device_name(device)
        check_runtime(runtime, device)
        unknown = sorted(set(options) - set(Settings.names()))
        if unknown:
            raise TypeError(f"Segmenter() got unexpected keyword argument(s) {', '.join(unknown)}")
        backend = backend_of(sam)
        if speed == "fast" and precision == "fp32" and backend.can("bf16"):
            precision = "bf16"  # autocast on CUDA only: CPU runs stay fp32
        own = TINY_GENERATOR_PARAMS if sam in (TINY, TINY_SAM2) else FAST_GRID if speed == "fast" else {}
        #: every option that changes results, frozen and validated
        self.settings = Settings(generator_params={**own, **check_generator_params(dict(generator_params or {}))},
                                 precision=precision, speed=speed, **options)
        if sam != "<custom>":
            check_options(backend, precision=precision, speed=speed, generator_params=generator_params,
                          runtime=runtime)
        self.sam_name, self.clip_name, self.device_name, self.runtime = sam, clip, device, runtime
        self.taxonomy = load_taxonomy(taxonomy) if taxonomy is not None else None
        self.download, self.text_cache, self.precision, self.seed = download, text_cache, precision, seed
        self.templates = self.settings.templates
        self._proposer = self._embedder = self._bank = None
        self._unknown_proposer: Any = None
        if unknown_sam is not None and not isinstance(unknown_sam, str):  # a proposer object
            self._unknown_proposer, unknown_sam = unknown_sam, getattr(unknown_sam, "name", "<custom>")
        self.unknown_sam = (TINY if sam == TINY_SAM3 else DEFAULT_SAM) if unknown_sam == "auto" else unknown_sam
        self.caches = Caches()
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        """The settings read as attributes (``seg.min_confidence``); they are frozen: see :attr:`settings`."""
        settings = self.__dict__.get("settings")
        if settings is not None and name in Settings.names():
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def last_stats(self) -> dict[str, Any]:
        """What this thread's last ``segment`` / ``segment_everything`` call did: strategy, decoder prompts, CLIP
        passes, and (SAM 1, 2.1) ``seconds`` of each stage that ran, each counted once (``PointPipeline.timed``)."""
        return getattr(self._local, "stats", {})

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
        if sam is not None:
            check_options(seg.backend, precision=seg.settings.precision, speed=seg.settings.speed,
                          generator_params=kwargs.get("generator_params"))
        return seg

    @property
    def policy(self) -> LabelPolicy:
        return LabelPolicy.of(self.settings)

    def config(self) -> dict[str, Any]:
        """Every parameter that changes results (for provenance files)."""
        out = {"sam": self.sam_name, "clip": self.clip_name, **self.settings.to_dict(),
               "taxonomy": self.taxonomy.name if self.taxonomy else None}
        fast = {"runtime": self.runtime} if self.speed == "fast" else {}  # int8 CLIP if ONNX Runtime runs it
        return {**out, **fast, **({"unknown_sam": self.unknown_sam} if self.is_concept_model else {})}

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
        check_generator_params(generator_params)
        check_options(self.backend, strategy=strategy, refine=refine, part_points=part_points,
                      generator_params=generator_params)
        tax = load_taxonomy(taxonomy) if taxonomy is not None else self.taxonomy
        resolved, free = resolve_query(terms, tax)
        return self._run("query", Query(image, tuple(terms), tax, tuple(resolved), tuple(free), refine,
                                        include_parts, part_points, strategy, generator_params))

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
        self._check_everything(strategy, part_points, generator_params)
        tax = load_taxonomy(taxonomy) if taxonomy is not None else self.taxonomy
        if strategy == "guided" and (tax is None or not label):
            raise ConfigError("strategy='guided' needs a taxonomy to label with: its top-level categories "
                              "guide the prompts (or use segment() with a query)")
        return self._run("everything", Everything(image, tax, label, include_parts, part_points, with_embeddings,
                                                  strategy, generator_params))

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
        check_options(self.backend, prompts=True)
        return PointPipeline(self).prompt(image, points, labels, box, mask, multimask)

    # -- for the pipelines -----------------------------------------------------------------------------------------
    def _check_everything(self, strategy: str, part_points: int, generator_params: dict[str, Any]) -> None:
        """``segment_everything``'s options, before any model runs; with SAM 3, generator parameters set the grid of
        ``unknown_sam``, if there is one."""
        check_strategy(strategy)
        check_generator_params(generator_params)
        grid = self.backend
        if self.is_concept_model and generator_params:
            if self.unknown_sam is None:
                raise ConfigError(f"generator parameters ({', '.join(sorted(generator_params))}) set the point grid "
                                  "of unknown_sam, and this SAM 3 segmenter has unknown_sam=None")
            unknown = self._unknown_proposer
            grid = backend_for(unknown) if unknown is not None else backend_of(str(self.unknown_sam))
        check_options(self.backend, strategy=strategy, part_points=part_points)
        check_options(grid, generator_params=generator_params)

    def _run(self, what: str, request: Any) -> Segmentation:
        pipeline = PIPELINES[self.backend.pipeline](self)
        try:
            return getattr(pipeline, what)(request)
        finally:
            self._local.stats = pipeline.stats

    def prepare(self, image: ImageInput) -> Work:
        return prepare(image, self.settings.max_side, self.settings.full_resolution)

    def model_names(self) -> dict[str, str]:
        return {"sam": self.sam_name, "clip": self.clip_name}


def check_runtime(runtime: str, device: Any) -> None:
    """*runtime* is one of :data:`~clipsam.models.onnx.RUNTIMES`, and ``onnx`` is not asked of a GPU."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnx" and str(device).split(":")[0] in ("cuda", "mps"):
        raise ConfigError(f"runtime='onnx' is clipsam's CPU path; on {device} the models run in PyTorch "
                          "(runtime='torch' or 'auto')")


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
