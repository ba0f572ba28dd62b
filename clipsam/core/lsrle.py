"""Label Studio's brush RLE: the mask format of ``brushlabels`` results, in numpy.

Label Studio keeps a brush mask as an RGBA image (``H * W * 4`` bytes, row-major) packed with thi.ng's
``rle-pack`` bit format: a 32-bit value count, the word size less one (5 bits), four run-length field sizes less
one (4 bits each), then chunks of ``repeat flag (1 bit) | size class (2 bits) | run length - 1 (that class's bits)``
followed by one word (a repeated run) or that many words (literal values); bits are most significant first and the
last byte is zero-padded. The integers of ``value.rle`` are those bytes.

clipsam writes every run as a repeat chunk (a mask is long runs of 0 and 255) and reads both kinds. A pixel is in
the mask when its alpha byte is non-zero, as Label Studio's own converter reads it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode", "encode"]

WORD_BITS = 8
#: bits of the four run-length classes (Label Studio's converter uses the same)
RUN_BITS = (3, 4, 8, 16)
_HEADER_BITS = 32 + 5 + 4 * 4


def encode(mask: np.ndarray) -> list[int]:
    """``(H, W)`` bool mask -> Label Studio brush RLE (``value.rle``): the bytes of the packed RGBA image."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {m.shape}")
    flat = m.ravel()
    n = flat.size * 4
    if n >= 2 ** 32:
        raise ValueError(f"a {m.shape[1]}x{m.shape[0]} mask is too large for Label Studio's RLE (2^32 values)")
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]]) if flat.size else np.zeros(0, np.int64)
    runs = np.diff(np.r_[starts, flat.size]).astype(np.int64) * 4  # 4 bytes (RGBA) per pixel
    values = np.where(flat[starts], 255, 0) if flat.size else np.zeros(0, np.int64)
    longest = 2 ** RUN_BITS[-1]
    pieces = (runs + longest - 1) // longest  # runs longer than the largest class are split
    value = np.repeat(values, pieces)
    length = np.full(int(pieces.sum()), longest, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    length[last] = runs - (pieces - 1) * longest
    cls = np.searchsorted(np.asarray([2 ** b for b in RUN_BITS]), length, side="left")  # smallest class that fits
    field_bits = np.asarray(RUN_BITS)[cls]
    k = len(length)
    # fields of every chunk in order: flag (1), class (2), length - 1, value (8)
    vals = np.stack([np.ones(k, np.int64), cls, length - 1, value], axis=1).ravel()
    widths = np.stack([np.ones(k, np.int64), np.full(k, 2), field_bits, np.full(k, WORD_BITS)], axis=1).ravel()
    header_vals = np.r_[n, WORD_BITS - 1, np.asarray(RUN_BITS) - 1].astype(np.int64)
    header_widths = np.r_[32, 5, 4, 4, 4, 4].astype(np.int64)
    return np.packbits(_bits(np.r_[header_vals, vals], np.r_[header_widths, widths])).tolist()


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The bits of each value in its width, most significant first, concatenated: ``(sum(widths),) uint8``."""
    owner = np.repeat(np.arange(len(values)), widths)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(widths) - widths, widths)
    shift = widths[owner] - 1 - offset
    return ((values[owner] >> shift) & 1).astype(np.uint8)


class _Bits:
    def __init__(self, data: bytes | list[int]) -> None:
        self.bits = np.unpackbits(np.asarray(data, dtype=np.uint8))
        self.i = 0

    def read(self, n: int) -> int:
        if self.i + n > len(self.bits):
            raise ValueError("Label Studio RLE ends in the middle of a chunk")
        out = 0
        for b in self.bits[self.i: self.i + n]:
            out = (out << 1) | int(b)
        self.i += n
        return out


def decode_values(rle: bytes | list[int]) -> np.ndarray:
    """Label Studio brush RLE -> the flat values it packs (``H * W * 4`` uint8 for a brush mask)."""
    bits = _Bits(rle)
    n, word = bits.read(32), bits.read(5) + 1
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(n, dtype=np.uint32)
    i = 0
    while i < n:
        repeat = bits.read(1)
        j = min(n, i + 1 + bits.read(sizes[bits.read(2)]))
        if repeat:
            out[i:j] = bits.read(word)
        else:
            out[i:j] = [bits.read(word) for _ in range(j - i)]
        i = j
    return out


def decode(rle: bytes | list[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE of an ``height x width`` image -> ``(H, W)`` bool mask (alpha > 0)."""
    values = decode_values(rle)
    if values.size != height * width * 4:
        raise ValueError(f"Label Studio RLE holds {values.size} values, a {width}x{height} RGBA mask has "
                         f"{height * width * 4}")
    return values.reshape(height, width, 4)[:, :, 3] > 0
