"""The errors clipsam raises.

Every error says what happened and what to do next; the CLI prints ``str(error)`` as one line and exits
non-zero. Catch :class:`ClipsamError` to catch them all.
"""

from __future__ import annotations


class ClipsamError(Exception):
    """Base class of every error clipsam raises on purpose."""


class ImageError(ClipsamError, ValueError):
    """An image could not be read or is not usable (names the file and the reason)."""


class PromptError(ClipsamError, ValueError):
    """Points, boxes, masks or text queries that do not fit the image or each other."""


class WeightsError(ClipsamError):
    """A checkpoint is missing, failed verification, or could not be loaded."""


class WeightsMissingError(WeightsError, FileNotFoundError):
    """A checkpoint is not in the cache and cannot be downloaded (offline, or the download failed)."""


class ChecksumError(WeightsError):
    """A checkpoint's bytes do not match the SHA-256 pinned in the registry."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint holds objects other than tensors (for example a code payload) and was refused."""


class ModelError(ClipsamError, ValueError):
    """An unknown model name, or a model that does not fit clipsam's interfaces."""


class TaxonomyError(ClipsamError, ValueError):
    """A taxonomy file or label that is malformed or unknown (names the file and the node)."""


class ConfigError(ClipsamError, ValueError):
    """A parameter or option value that is out of range, or options that do not go together."""


class LockError(ClipsamError):
    """An output folder or database is in use by another clipsam run (the message names it)."""


class OutputError(ClipsamError):
    """An output that would change the user's files: an input, a file clipsam did not write, a planted link."""
