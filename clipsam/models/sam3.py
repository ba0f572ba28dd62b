"""SAM 3 (Segment Anything with Concepts) behind clipsam's concept-proposer interface, through Hugging Face
``transformers`` (``Sam3Model``; pure PyTorch, runs on CPU). Install with ``pip install 'clipsam[sam3]'``.

SAM 3 answers a noun phrase with every matching instance: a mask, a box and a score. clipsam asks it one phrase
per taxonomy label, computes the image's vision features once and reuses them for every phrase, and caches each
phrase's text features, so a 20-label taxonomy costs one vision pass plus 20 light decoder passes (batched).

Scores are SAM 3's own: ``sigmoid(query logit) * sigmoid(presence logit)``, the probability that this instance
shows the phrase (as ``transformers``' ``post_process_instance_segmentation`` computes them). They are used as
label probabilities on the same scale as CLIP's (``min_confidence`` applies to both).

Images are resized to the model's square input (1008 px; SAM 3's own preprocessing, ImageNet-standard mean and
std of 0.5) and masks come back at the embedded image's size. Phrases are tokenised with CLIP's BPE (the
vocabulary SAM 3's text encoder uses, shipped with open_clip), 32 tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import masks as M
from ..errors import ModelError, PromptError
from .base import ConceptHit

log = logging.getLogger(__name__)

#: Tokens per phrase (SAM 3's text encoder has 32 positions).
CONTEXT_LENGTH = 32
#: The ``tiny-random-sam3`` entry keeps its best few instances per phrase whatever their score: its random scores
#: all sit near 0.25, so SAM 3's 0.5 would leave nothing to test with, and 0 would keep every query.
TINY_THRESHOLD = 0.0
TINY_MAX_INSTANCES = 3


def require_transformers() -> Any:
    """The ``transformers`` module, with a SAM 3 model class, or a :class:`ModelError` saying how to install it."""
    try:
        import transformers
        from transformers import Sam3Config, Sam3Model  # noqa: F401
    except ImportError as exc:
        raise ModelError("the SAM 3 backend needs transformers >= 5 (Sam3Model): pip install 'clipsam[sam3]'") from exc
    return transformers


def build_sam3_model(config: Any = None, seed: int | None = None) -> Any:
    """A ``transformers`` ``Sam3Model`` for *config* (default: the full-size ``facebook/sam3`` architecture)
    with random weights (seeded) -- load a state dict next."""
    require_transformers()
    from transformers import Sam3Config, Sam3Model

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return Sam3Model(config if config is not None else Sam3Config()).eval()


def sam3_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's tensors as ``Sam3Model`` keys: the video model's ``detector_model.`` prefix removed, its
    tracker's tensors (``tracker_model.``, ``tracker_neck.``) dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith(("tracker_model.", "tracker_neck.")):
            continue
        out[key.removeprefix("detector_model.")] = value
    return out


def load_sam3_weights(model: Any, state: dict[str, Any], source: str) -> None:
    """Load *state* into *model*, refusing a checkpoint that leaves any of the model's tensors unset."""
    missing, unexpected = model.load_state_dict(sam3_state_dict(state), strict=False)
    if missing:
        raise ModelError(f"{source}: not a SAM 3 checkpoint: {len(missing)} of the model's tensors are missing "
                         f"(e.g. {', '.join(missing[:3])})")
    if unexpected:
        log.info("%s: %d tensors not used by Sam3Model (e.g. %s)", source, len(unexpected), unexpected[:3])


@dataclass(frozen=True)
class Sam3Embedding:
    """The image's vision features (computed once) and the size of the image they came from."""

    vision: Any
    size: tuple[int, int]


class Sam3Proposer:
    """A ``transformers`` ``Sam3Model`` as a concept proposer.

    Args:
        model: the ``Sam3Model``.
        device: where it runs.
        name: registry name, for messages.
        threshold: instances scoring below this are dropped (SAM 3's authors use 0.5).
        batch: phrases per decoder pass (each phrase decodes ``num_queries`` masks: bounded memory).
        max_instances: keep at most this many instances per phrase, best first (``None``: all above threshold).
    """

    #: the backend it is (:mod:`clipsam.models.backends`)
    backend = "sam3"

    def __init__(self, model: Any, device: torch.device | str = "cpu", *, name: str = "sam3",
                 threshold: float = 0.5, batch: int = 4, max_instances: int | None = None) -> None:
        require_transformers()
        import open_clip

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.name = name
        self.threshold = float(threshold)
        self.batch = max(1, int(batch))
        self.max_instances = max_instances
        self.image_size = int(model.config.vision_config.backbone_config.image_size)
        self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)
        self._text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- what SAM 3 does not do in clipsam ------------------------------------------------------------------
    def predict(self, *args: Any, **kwargs: Any) -> Any:
        raise PromptError(f"{self.name} answers text and taxonomy queries; for clicks and boxes use a SAM 1 / 2.1 "
                          "model (--sam vit_b, sam2.1_hiera_tiny …): transformers' Sam3Model has no point prompts")

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise PromptError(f"{self.name} has no prompt-free mode: it finds the concepts it is asked for (segment "
                          "with a query or a taxonomy); unclaimed regions come from the segmenter's unknown_sam")

    # -- concepts -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Sam3Embedding:
        """Vision features of an ``(H, W, 3) uint8`` image (resized to the model's square input)."""
        x = torch.tensor(np.asarray(image), device=self.device).permute(2, 0, 1)[None].float() / 255.0
        x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                            align_corners=False, antialias=True)
        x = (x - 0.5) / 0.5
        return Sam3Embedding(self.model.get_vision_features(pixel_values=x), (int(image.shape[0]), int(image.shape[1])))

    @torch.inference_mode()
    def _text_features(self, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        new = [p for p in dict.fromkeys(phrases) if p not in self._text]
        if new:
            ids = self._tokenizer(list(new)).to(self.device)
            mask = (ids != 0).long()
            feats = self.model.get_text_features(input_ids=ids, attention_mask=mask, return_dict=True).pooler_output
            for k, p in enumerate(new):
                self._text[p] = (feats[k], mask[k])
        return (torch.stack([self._text[p][0] for p in phrases]), torch.stack([self._text[p][1] for p in phrases]))

    @torch.inference_mode()
    def find(self, embedding: Sam3Embedding, phrases: Sequence[str], *, threshold: float | None = None
             ) -> list[list[ConceptHit]]:
        """Every instance of each phrase: one list of :class:`ConceptHit` per phrase, best first, masks as RLE
        at the embedded image's size."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        cut = self.threshold if threshold is None else float(threshold)
        h, w = embedding.size
        out: list[list[ConceptHit]] = []
        for start in range(0, len(phrases), self.batch):
            chunk = list(phrases[start: start + self.batch])
            text, mask = self._text_features(chunk)
            n = len(chunk)
            vision = Sam3VisionEncoderOutput(
                fpn_hidden_states=tuple(t.expand(n, *t.shape[1:]) for t in embedding.vision.fpn_hidden_states),
                fpn_position_encoding=tuple(t.expand(n, *t.shape[1:]) for t in embedding.vision.fpn_position_encoding))
            res = self.model(vision_embeds=vision, text_embeds=_Pooled(text), attention_mask=mask)
            scores = res.pred_logits.sigmoid() * res.presence_logits.sigmoid()  # (n, Q)
            for k in range(n):
                keep = torch.nonzero(scores[k] > cut).flatten()
                keep = keep[torch.argsort(scores[k][keep], descending=True)][: self.max_instances]
                hits = []
                for q in keep.tolist():
                    logits = torch.nn.functional.interpolate(res.pred_masks[k, q][None, None].float(), size=(h, w),
                                                             mode="bilinear", align_corners=False)[0, 0]
                    binary = (logits > 0).cpu().numpy()
                    if not binary.any():
                        continue
                    box = (res.pred_boxes[k, q].float().cpu().numpy() * np.array([w, h, w, h])).tolist()
                    hits.append(ConceptHit(M.encode(binary), float(scores[k, q]), tuple(box)))
                out.append(hits)
        return out


class _Pooled:
    """What ``Sam3Model.forward`` reads from precomputed ``text_embeds``: their ``pooler_output``."""

    def __init__(self, pooler_output: torch.Tensor) -> None:
        self.pooler_output = pooler_output


def tiny_sam3_config() -> Any:
    """A small ``Sam3Config`` (112 px input, 2-layer towers, 20 queries): the ``tiny-random-sam3`` entry."""
    require_transformers()
    from transformers import Sam3Config

    image, patch = 112, 14
    grid = image // patch
    return Sam3Config(
        vision_config={"backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 64, "intermediate_size": 128,
                                           "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image,
                                           "patch_size": patch, "window_size": 4, "global_attn_indexes": [1],
                                           "pretrain_image_size": image},
                       "fpn_hidden_size": 32, "backbone_feature_sizes": [[grid * 4] * 2, [grid * 2] * 2, [grid] * 2]},
        text_config={"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 128, "projection_dim": 32,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": CONTEXT_LENGTH},
        geometry_encoder_config={"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        detr_encoder_config={"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        detr_decoder_config={"hidden_size": 32, "num_layers": 1, "num_queries": 20, "num_attention_heads": 2,
                             "intermediate_size": 64},
        mask_decoder_config={"hidden_size": 32, "num_upsampling_stages": 3, "num_attention_heads": 2},
    )
