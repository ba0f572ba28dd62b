"""Benchmark 10 — profile for issue 14 part 3: how much of the grid's decoder work is the same for every prompt?

    python benchmarks/decoder_shared.py

For grid prompts without a mask input, every prompt's two-way transformer starts from the same image embedding plus
the same dense "no mask" embedding, so in its *first* layer three projections of the 4,096 image tokens are
identical across prompts: the keys and values of token -> image attention and the queries of image -> token
attention. (From the second layer on the image tokens carry each prompt's update, so nothing else is shared.)

This script times, for one batch of 64 grid prompts on SAM ViT-B's mask decoder (the shape clipsam's generator
runs): the whole ``MaskDecoder`` forward, those three first-layer projections over the batch, and one full generator
step (decoder plus upsampling to the original size, thresholds, stability, RLE), with random weights (the cost does
not depend on them). Sharing the projections would remove at most their time minus one prompt's worth.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, photo, sam_model  # noqa: E402

from clipsam.models.sam import SamProposer  # noqa: E402


def best_of(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sam, kind = sam_model("vit_b")
    proposer = SamProposer(sam, "cpu", name="vit_b")
    image = photo(long_side=1024)
    emb = proposer.embed(image)
    features = emb.features if hasattr(emb, "features") else emb[0]
    b = args.batch
    pts = torch.rand(b, 1, 2) * 1024
    labels = torch.ones(b, 1, dtype=torch.int64)
    sparse, dense = sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
    pe = sam.prompt_encoder.get_dense_pe()

    def decoder():
        sam.mask_decoder(image_embeddings=features, image_pe=pe, sparse_prompt_embeddings=sparse,
                         dense_prompt_embeddings=dense, multimask_output=True)

    layer = sam.mask_decoder.transformer.layers[0]
    src = torch.repeat_interleave(features, b, dim=0) + dense
    keys = src.flatten(2).permute(0, 2, 1)
    key_pe = torch.repeat_interleave(pe, b, dim=0).flatten(2).permute(0, 2, 1)

    def shared():
        layer.cross_attn_token_to_image.k_proj(keys + key_pe)
        layer.cross_attn_token_to_image.v_proj(keys)
        layer.cross_attn_image_to_token.q_proj(keys + key_pe)

    def generator_step():
        proposer.generate(image, emb, points_per_side=8, points_per_batch=b, pred_iou_thresh=0.0,
                          stability_score_thresh=0.0)

    decoder()
    shared()
    t_dec = best_of(decoder)
    t_shared = best_of(shared)
    t_gen = best_of(generator_step, rounds=3)  # 8x8 = 64 prompts: one batch, as one step of the 32x32 grid
    removable = t_shared * (b - 1) / b
    print(f"# decoder profile, SAM ViT-B ({kind} weights), batch of {b} prompts — {machine()}")
    print(f"MaskDecoder forward: {t_dec * 1000:.0f} ms; first-layer shared projections: {t_shared * 1000:.0f} ms "
          f"({t_shared / t_dec:.1%} of the decoder)")
    print(f"one generator step (decoder + upsampling + thresholds + RLE, 64 prompts): {t_gen * 1000:.0f} ms; "
          f"sharing would remove at most {removable * 1000:.0f} ms = {removable / t_gen:.1%} of it")


if __name__ == "__main__":
    main()
