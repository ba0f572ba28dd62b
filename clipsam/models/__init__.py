"""Model adapters: SAM proposes masks, CLIP embeds crops and texts.

The orchestration (:class:`clipsam.Segmenter`) only talks to the two small interfaces in
:mod:`clipsam.models.base`; anything that implements them (SAM 1, the tiny random test models, an oracle,
your own model) plugs in.
"""

from .base import MaskProposer, PromptMasks, Proposal, RegionEmbedder

__all__ = ["MaskProposer", "PromptMasks", "Proposal", "RegionEmbedder"]
