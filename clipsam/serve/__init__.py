"""``clipsam serve``: one long-running process that loads the models once and answers HTTP (FastAPI + uvicorn):
text queries, segment-everything, prompts, and the Label Studio ML backend protocol. Needs ``clipsam[serve]``."""

from .service import Limits, Service

__all__ = ["Limits", "Service", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 (see app.create_app)
    """See :func:`clipsam.serve.app.create_app` (imports FastAPI on first use)."""
    from .app import create_app as _create

    return _create(*args, **kwargs)
