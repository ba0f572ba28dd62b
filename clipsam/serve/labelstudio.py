"""The Label Studio ML backend protocol on a :class:`~clipsam.serve.service.Service`.

Label Studio calls ``/setup`` when a project connects (the project's config, its host and a token), ``/predict``
with tasks (pre-annotations) or with one task and a ``context`` of smart-tool clicks and boxes (interactive), and
``/webhook`` on events. For pre-annotations clipsam labels every region when each of the project's labels names a
category of the server's taxonomy (``segment_everything``, labels mapped by label path, the hierarchy as relations),
and otherwise runs the labels as a text query (``segment``). Interactive masks come from SAM on the cached
embedding, labelled with the label the annotator chose, or by CLIP among the project's labels.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from ..errors import ClipsamError, ConfigError, ImageError
from ..labelstudio.config import LabelConfig
from ..labelstudio.results import context_prompts, prediction, region_results
from ..result import Segmentation
from ..stages.label import resolve_query
from .fetch import LabelStudioAccess, fetch

log = logging.getLogger(__name__)

__all__ = ["LabelStudioBackend", "mask_of"]

#: fetched task images kept for the next click on the same task
IMAGE_CACHE = 8


class LabelStudioBackend:
    """Answers Label Studio for a service; *access* (``--label-studio-url`` / ``--label-studio-key``) wins over what
    ``/setup`` sends."""

    def __init__(self, service: Any, access: LabelStudioAccess | None = None) -> None:
        self.service = service
        self.access = access
        self._projects: dict[str, LabelStudioAccess] = {}
        self._images: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/setup``: check the config, remember the project's host and token."""
        if body.get("schema"):
            LabelConfig.parse(str(body["schema"]))
        if body.get("hostname") and self.access is None:
            with self._lock:
                self._projects[str(body.get("project"))] = LabelStudioAccess(str(body["hostname"]),
                                                                             body.get("access_token") or None)
        return {"model_version": self.service.model_version}

    def _access(self, project: Any) -> LabelStudioAccess | None:
        if self.access is not None:
            return self.access
        with self._lock:
            return self._projects.get(str(project))

    def _image(self, task: dict[str, Any], cfg: LabelConfig, project: Any) -> Any:
        data = task.get("data") or {}
        url = data.get(cfg.image_key)
        if not isinstance(url, str) or not url:
            raise ImageError(f"task {task.get('id')}: no image under data.{cfg.image_key}")
        with self._lock:
            raw = self._images.get(url)
        if raw is None:
            lim = self.service.limits
            raw = fetch(url, self._access(project), max_bytes=lim.max_request_bytes, timeout=min(60.0, lim.timeout_s))
            with self._lock:
                self._images[url] = raw
                while len(self._images) > IMAGE_CACHE:
                    self._images.popitem(last=False)
        return self.service.image(raw, f"task {task.get('id')} ({url[-80:]})")

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/predict``: one prediction per task, or, with a smart-tool context, the interactive mask."""
        cfg = LabelConfig.parse(str(body.get("label_config") or ""))
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ConfigError("the Label Studio request has no tasks")
        context = (body.get("params") or {}).get("context")
        if context and context.get("result"):
            return {"results": [self.interactive(tasks[0], cfg, context, body.get("project"))]}
        results = []
        for task in tasks:
            try:
                results.append(self.pre_annotate(task, cfg, body.get("project")))
            except ClipsamError as e:
                if len(tasks) == 1:
                    raise
                log.warning("task %s: no prediction: %s", task.get("id"), e)
                results.append({"result": [], "score": 0.0, "model_version": self.service.model_version,
                                "error": str(e)})
        return {"results": results}

    def segmentation(self, image: Any, cfg: LabelConfig) -> Segmentation:
        """All the project's labels named in the taxonomy: label everything; else the labels as a text query."""
        seg = self.service.seg
        names = [n for n in cfg.labels if n.lower() not in ("unknown", "unknown part")]
        _, free = resolve_query(names, seg.taxonomy)
        if seg.taxonomy is not None and not free:
            return seg.segment_everything(image)
        return seg.segment(image, names)

    def pre_annotate(self, task: dict[str, Any], cfg: LabelConfig, project: Any) -> dict[str, Any]:
        return prediction(self.segmentation(self._image(task, cfg, project), cfg), cfg, self.service.model_version)

    def interactive(self, task: dict[str, Any], cfg: LabelConfig, context: dict[str, Any], project: Any
                    ) -> dict[str, Any]:
        """SAM's best mask for the clicks and box, labelled with the annotator's label or by CLIP."""
        from ..pipelines.classify import classify_masks

        seg = self.service.seg
        image = self._image(task, cfg, project)
        points, labels, box, chosen = context_prompts(context, image.shape[:2])
        out = seg.segment_prompt(image, points=points, labels=labels, box=box)
        best = out.regions[0]
        label, score = cfg.find(chosen), float(best.predicted_iou)
        if label is None:
            names = [n for n in cfg.labels if n.lower() not in ("unknown", "unknown part")]
            found, score = classify_masks(seg, image, [best.rle], names)[0]
            label = cfg.find(found) or cfg.find("unknown")
        if label is None:
            return {"result": [], "score": 0.0, "model_version": self.service.model_version}
        region = replace(best, label=label, label_path=(), score=score)
        one = Segmentation(image_size=out.image_size, regions=(region,))
        return {"result": region_results(one, cfg), "score": score, "model_version": self.service.model_version}


def mask_of(result: dict[str, Any]) -> Any:
    """A ``brushlabels`` result's mask, ``(H, W) bool`` (for clients and tests)."""
    from ..core import lsrle

    return lsrle.decode(result["value"]["rle"], result["original_height"], result["original_width"])

