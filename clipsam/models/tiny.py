"""The ``tiny-random`` registry entries: the real SAM and open_clip architectures at toy size, random weights.

Real code paths, meaningless outputs: for tests (yours too), shapes, wiring, determinism and error handling. Built
through the same builder path as ``vit_b`` (:mod:`clipsam.models.build`); their generator defaults travel with the
entry (:data:`clipsam.models.base.TINY_GENERATOR_PARAMS`).
"""

from __future__ import annotations

__all__ = ["tiny_clip", "tiny_sam"]


def tiny_sam(seed: int = 0):
    """A real ``segment_anything`` ``Sam`` at toy size (64 px input, 1-block encoder), random weights."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    img_size, patch, dim = 64, 16, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size, patch_size=patch, embed_dim=dim, depth=1, num_heads=2, mlp_ratio=2.0,
                out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True, window_size=2, global_attn_indexes=(0,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim, image_embedding_size=(img_size // patch, img_size // patch),
                input_image_size=(img_size, img_size), mask_in_chans=8,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
                transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
            ),
        )
    return model.eval()


def tiny_clip(seed: int = 0):
    """A real open_clip ``CLIP`` at toy size (32 px, 1 layer per tower), random weights.

    Returns ``(model, preprocess, tokenizer)`` like ``open_clip.create_model_and_transforms`` plus
    ``get_tokenizer``.
    """
    import open_clip
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(
            embed_dim=16,
            vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        )
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    return model.eval(), preprocess, tokenizer
