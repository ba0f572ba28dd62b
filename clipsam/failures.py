"""Telling a systematic failure from bad images in a batch run (``clipsam label``, ``clipsam index``).

A bad image (truncated, not an image, too large) is one error row and the run goes on. But when the same error that
is not about the image comes back on the first images, or many times in a row, it is the run that is broken (a
missing checkpoint, out of memory, a bug), and recording it once per image would "finish" a run in which every image
failed. :class:`FailureGuard` stops the run with one line instead; what finished stays, and the same command
resumes once the cause is fixed. Pure standard library.
"""

from __future__ import annotations

import re

from .errors import ClipsamError

__all__ = ["FIRST_IMAGES", "IN_A_ROW", "FailureGuard", "SystematicFailure"]

#: The run stops when this many first images all fail with the same error that is not about the image ...
FIRST_IMAGES = 3
#: ... or when the same such error comes this many times in a row.
IN_A_ROW = 20


class SystematicFailure(ClipsamError):
    """The same error, not about any one image, keeps coming back: the run is stopped, finished work is kept."""


class FailureGuard:
    """Feed it each image's outcome (:meth:`record`); it raises :class:`SystematicFailure` when the run is broken.

    Args:
        first: stop when the first *first* images all fail with the same error (not an image error).
        in_a_row: stop when the same such error comes *in_a_row* times in a row.
    """

    def __init__(self, first: int = FIRST_IMAGES, in_a_row: int = IN_A_ROW) -> None:
        self.first, self.in_a_row = first, in_a_row
        self.seen = 0
        self.streak = 0
        self.reason = ""

    def record(self, ok: bool, reason: str = "", *, image_error: bool = False) -> None:
        """One image's outcome: *ok*, or its error *reason*; *image_error*: the error is about that image alone."""
        self.seen += 1
        if ok or image_error:
            self.streak, self.reason = 0, ""
            return
        key = _without_paths(reason)
        self.streak = self.streak + 1 if key == self.reason else 1
        self.reason = key
        if (self.seen == self.streak and self.streak >= self.first) or self.streak >= self.in_a_row:
            where = (f"the first {self.streak} images" if self.seen == self.streak else
                     f"{self.streak} images in a row")
            raise SystematicFailure(
                f"stopped: {where} failed with the same error, which is not about any one image ({reason}); "
                "finished images are kept: fix the cause and run the same command again to resume")


def _without_paths(reason: str) -> str:
    """The error without the image it names, so that the same error on different images compares equal."""
    return re.sub(r"(^|\s)(/|\.{0,2}/)?[^\s:]*\.(jpe?g|png|bmp|tiff?|webp|gif|ppm|pgm)\b", " <image>", reason,
                  flags=re.IGNORECASE).strip()
