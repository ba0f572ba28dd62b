"""Drives a real Label Studio server the way a user does, with Label Studio's own SDK; run by the tests with the
Python of the environment where ``label-studio`` is installed (it is kept apart from clipsam's: Label Studio pins
its own Django, numpy and friends). Reads one JSON job from argv[1], writes what Label Studio holds to argv[2].

Jobs: ``backend`` (a project connected to clipsam serve as its ML backend: uploaded images, predictions retrieved by
Label Studio, one interactive click through Label Studio), ``import`` (a project that imports a task file with
predictions). Every mask is decoded with Label Studio's own RLE decoder and every prediction validated against the
project's config with Label Studio's own LabelInterface.
"""

import json
import sys
import time

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface


def decoded(result):
    """Label Studio's reading of each brush result: {result id: flat indices of the mask's pixels}."""
    out = {}
    for r in result:
        if r.get("type") == "brushlabels":
            h, w = r["original_height"], r["original_width"]
            alpha = np.reshape(decode_rle(r["value"]["rle"]), [h, w, 4])[:, :, 3]
            out[r["id"]] = np.flatnonzero(alpha.ravel() > 0).tolist()
    return out


def predictions_of(ls, project_id, config):
    li = LabelInterface(config)
    tasks = []
    for task in ls.tasks.list(project=project_id, fields="all"):
        preds = [p for p in ls.predictions.list(task=task.id)]
        tasks.append({"id": task.id, "data": task.data, "predictions": [
            {"result": p.result, "score": p.score, "model_version": p.model_version, "masks": decoded(p.result),
             "errors": li.validate_prediction({"result": p.result}, return_errors=True)} for p in preds]})
    return tasks


def backend(job, ls):
    url, key = job["label_studio"], job["token"]
    project = ls.projects.create(title="clipsam backend", label_config=job["config"])
    for path in job["images"]:
        with open(path, "rb") as fh:
            r = requests.post(f"{url}/api/projects/{project.id}/import", headers={"Authorization": f"Token {key}"},
                              files={path.rsplit("/", 1)[-1]: fh}, timeout=60)
            r.raise_for_status()
    ml = ls.ml.create(project=project.id, url=job["backend"], title="clipsam", is_interactive=True)
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                      selected_items={"all": True, "excluded": []})
    deadline = time.time() + 120
    while time.time() < deadline:
        tasks = predictions_of(ls, project.id, job["config"])
        if all(t["predictions"] for t in tasks):
            break
        time.sleep(1)
    first = tasks[0]["id"]
    r = requests.post(f"{url}/api/ml/{ml.id}/interactive-annotating", headers={"Authorization": f"Token {key}"},
                      json={"task": first, "context": job["context"]}, timeout=120)
    interactive = r.json()
    data = interactive.get("data") or {}
    interactive["masks"] = decoded(data.get("result", []))
    interactive["errors_vs_config"] = LabelInterface(job["config"]).validate_prediction(
        {"result": data.get("result", [])}, return_errors=True) if data.get("result") else None
    return {"tasks": tasks, "interactive": interactive, "interactive_status": r.status_code}


def import_file(job, ls):
    project = ls.projects.create(title="clipsam file", label_config=job["config"])
    with open(job["tasks_file"], encoding="utf-8") as fh:
        ls.projects.import_tasks(project.id, request=json.load(fh))
    return {"tasks": predictions_of(ls, project.id, job["config"])}


def main():
    with open(sys.argv[1], encoding="utf-8") as fh:
        job = json.load(fh)
    ls = LabelStudio(base_url=job["label_studio"], api_key=job["token"])
    out = {"backend": backend, "import": import_file}[job["job"]](job, ls)
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
