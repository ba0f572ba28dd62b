"""Label Studio interop: labeling configs for a taxonomy (:mod:`.config`), clipsam's regions as Label Studio results
with the hierarchy as relations (:mod:`.results`), task files with predictions (:mod:`.tasks`), and the ML backend
protocol that ``clipsam serve`` speaks (:mod:`clipsam.serve.labelstudio`). Pure Python and numpy."""

from .config import PART_OF, LabelConfig, label_config
from .results import context_prompts, prediction, region_results

__all__ = ["PART_OF", "LabelConfig", "context_prompts", "label_config", "prediction", "region_results"]
