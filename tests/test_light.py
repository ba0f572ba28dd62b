import subprocess
import sys

PURE = ["clipsam", "clipsam.errors", "clipsam.result", "clipsam.export", "clipsam.overlay", "clipsam.lock",
        "clipsam.report", "clipsam.yolo", "clipsam.core.polygons", "clipsam.stages.concepts",
        *(f"clipsam.core.{m}" for m in ("masks", "image", "taxonomy", "tree", "regions", "labels", "crops", "config",
                                        "vocabulary")),
        *(f"clipsam.stages.{m}" for m in ("prepare", "nest", "embed", "label", "guide", "parts", "prompt",
                                          "assemble")),
        "clipsam.models.base", "clipsam.models.owner", "clipsam.core.lsrle", "clipsam.labelstudio",
        "clipsam.labelstudio.tasks", "clipsam.serve", "clipsam.serve.service", "clipsam.serve.labelstudio",
        "clipsam.serve.fetch", "clipsam.cvat", "clipsam.integrations.fiftyone"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_clipsam_does_not_load_torch():
    proc = _run("import sys, clipsam; print('torch' in sys.modules, 'open_clip' in sys.modules, "
                "'transformers' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "False"]


def test_pure_core_works_with_torch_blocked():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        + "".join(f"import {m}\n" for m in PURE)
        + "import numpy as np\n"
        "from clipsam.core import masks, tree\n"
        "m = np.zeros((8, 8), bool); m[2:6, 2:6] = True\n"
        "print(masks.area(masks.encode(m)), tree.build_parents([masks.encode(m)]).tolist())\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "16 [-1]"
