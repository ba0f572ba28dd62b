"""Benchmark — labelling rules in the CLIP-like world: free-text precision / recall and per-level accuracy.

    python benchmarks/labels_world.py --seeds 20 --scenes 5
    python benchmarks/labels_world.py --margins --seeds 40     # what the union rule's margin is measured from

Each seed draws a new world (concept vectors, crops' noise) and *scenes* scenes in it (`clipsam.testing.world`):
two background slabs, four objects (in most scenes one lies on a support: a cat on a sofa), their parts, and what a
SAM-like proposer returns (objects, parts, slabs, unions, halves, near-duplicates). Three rule sets are compared
on the same scenes:

* **today** -- the rules before this change: top-down from the top-level names, free text against the 8 negatives
  only, containers keep their labels (``scoring="top-down", vocabulary=False, union_margin=None``);
* **default** -- subtree (CHiLS) scoring, the vocabulary, the union rule;
* **top-down** -- the option: top-down scoring with the vocabulary and the union rule.

Free text: ``segment(image, term)`` without a taxonomy, for every object's basic-level name and one absent name;
a returned region is right when it covers a true object of that name with IoU >= 0.8. Levels:
``segment_everything(image)`` with ``everyday``; each true instance is compared with the region that covers it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np

from clipsam.core import masks as M
from clipsam.core.labels import label_objects
from clipsam.core.vocabulary import query_taxonomy
from clipsam.stages.label import LabelPolicy, _part_or_object, evidence
from clipsam.testing.world import (
    REGION_KINDS,
    CLIPLikeWorld,
    WorldParams,
    absent_term,
    basic_terms,
    level_hits,
    object_crops,
    query_counts,
    region_verdicts,
    reliability,
)

RULES = {
    "today": {"scoring": "top-down", "vocabulary": False, "union_margin": None},
    "default": {},
    "top-down": {"scoring": "top-down"},
}
LEVELS = ("object L1", "object L2", "object L3", "part", "stuff")


def run(seeds: int, scenes: int, params: WorldParams) -> dict[str, dict[str, float]]:
    counts: dict[str, np.ndarray] = {name: np.zeros(3, int) for name in RULES}
    unions: dict[str, list[bool]] = {name: [] for name in RULES}
    levels: dict[str, dict[str, list[bool]]] = {name: defaultdict(list) for name in RULES}
    for seed in range(seeds):
        world = CLIPLikeWorld(seed, params)
        for k in range(scenes):
            scene = world.scene(k)
            terms = basic_terms(scene) + [absent_term(world, scene)]
            small = {s.path[1] for s in scene.instances if s.kind == "object" and s.parent is not None}
            for name, rules in RULES.items():
                free = world.segmenter(scene, taxonomy=None, **rules)
                for term in terms:
                    result = free.segment(scene.image, term)
                    counts[name] += query_counts(result, scene, term)
                    if term in small:  # the object lying on a support: its union must not be returned
                        unions[name].append(_returns_union(result, scene))
                everything = world.segmenter(scene, **rules).segment_everything(scene.image)
                for level, hits in level_hits(everything, scene).items():
                    levels[name][level].extend(hits)
    out = {}
    for name in RULES:
        tp, fp, fn = counts[name]
        row = {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn),
               "union returned": float(np.mean(unions[name])) if unions[name] else float("nan")}
        row.update({level: float(np.mean(levels[name][level])) for level in LEVELS if levels[name][level]})
        row.update({f"n {level}": len(levels[name][level]) for level in LEVELS})
        out[name] = row
    return out


def _returns_union(result, scene) -> bool:
    if not scene.unions or not len(result):
        return False
    ious = M.iou_matrix([r.rle for r in result], list(scene.unions))
    return bool((ious >= 0.9).any())


def every_region(seeds: int, scenes: int, params: WorldParams, first_seed: int = 0) -> dict[str, dict]:
    """What a user receives: every labelled region of ``segment_everything`` judged by what lies under most of its
    pixels (:func:`~clipsam.testing.world.region_verdicts`), per rule set: precision overall and per kind (object,
    part, union, piece, stuff), confident wrong labels (score >= 0.5), and the reliability table."""
    out = {}
    for name, rules in RULES.items():
        verdicts = []
        for seed in range(first_seed, first_seed + seeds):
            world = CLIPLikeWorld(seed, params)
            for k in range(scenes):
                scene = world.scene(k)
                seg = world.segmenter(scene, **rules).segment_everything(scene.image)
                verdicts += region_verdicts(seg, scene, world.taxonomy)
        out[name] = verdict_row(verdicts)
    return out


def verdict_row(verdicts: list[dict]) -> dict:
    """Label precision over every labelled region and per kind, confident wrong labels (score >= 0.5; of them
    pieces), and the reliability table."""
    row: dict = {"labelled": len(verdicts), "precision": float(np.mean([v["correct"] for v in verdicts]))}
    for kind in REGION_KINDS:
        hits = [v["correct"] for v in verdicts if v["kind"] == kind]
        row[f"precision {kind}"], row[f"n {kind}"] = (float(np.mean(hits)) if hits else float("nan")), len(hits)
    wrong = [v for v in verdicts if not v["correct"] and v["score"] >= 0.5]
    row["confident wrong"] = len(wrong)
    row["confident wrong pieces"] = sum(v["kind"] == "piece" for v in wrong)
    row["reliability"] = reliability(verdicts)
    return row


#: World settings of ``--grid``: what issue 23 asks the default rules to hold across, without re-tuning.
GRID = (("default", {}), ("hypernym 0.15", {"hypernym": 0.15}), ("hypernym 0.3", {"hypernym": 0.3}),
        ("2 of a category", {"copies": 2}), ("4 of a category", {"copies": 4}), ("3 pieces per object", {"pieces": 3}),
        ("5 pieces per object", {"pieces": 5}))


def measure(params: WorldParams, rules: dict, seeds: int, scenes: int, first_seed: int = 0) -> dict:
    """Everything issue 23 asks of one rule set in one world setting, on the same scenes: label precision over every
    labelled region of ``segment_everything`` (and per kind), confident wrong labels (score >= 0.5; of them pieces),
    per-level recall (each true instance against the region covering it best), free-text precision and recall
    (``segment(image, term)`` without a taxonomy), and the reliability table."""
    verdicts: list[dict] = []
    levels: dict[str, list[bool]] = defaultdict(list)
    ceiling: dict[str, list[bool]] = defaultdict(list)
    counts = np.zeros(3, int)
    for seed in range(first_seed, first_seed + seeds):
        world = CLIPLikeWorld(seed, params)
        for k in range(scenes):
            scene = world.scene(k)
            everything = world.segmenter(scene, **rules).segment_everything(scene.image)
            verdicts += region_verdicts(everything, scene, world.taxonomy)
            for level, hits in level_hits(everything, scene).items():
                levels[level].extend(hits)
            for level, hits in own_crop_hits(world, scene, rules).items():
                ceiling[level].extend(hits)
            free = world.segmenter(scene, taxonomy=None, **rules)
            for term in basic_terms(scene) + [absent_term(world, scene)]:
                counts += query_counts(free.segment(scene.image, term), scene, term)
                ceiling["free recall"] += own_crop_query_hits(world, scene, free, term)
    tp, fp, fn = counts
    row = verdict_row(verdicts)
    row.update({level: float(np.mean(levels[level])) for level in LEVELS if levels[level]})
    row.update({f"n {level}": len(levels[level]) for level in LEVELS})
    row.update({f"ceiling {key}": float(np.mean(hits)) for key, hits in ceiling.items() if hits})
    row["free precision"], row["free recall"] = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return row


def own_crop_hits(world: CLIPLikeWorld, scene, rules: dict) -> dict[str, list[bool]]:
    """Per-level correctness of each true object's label from its own exact crop alone (``label_objects`` against the
    same competitors): the ceiling of any rule that labels a region from its own crop. ``part``: each true part
    from its own crop, decided by the part rule inside its object's own-crop decision -- right only when both are,
    as ``level_hits`` asks of the whole path."""
    objects, feats = object_crops(world, scene)
    seg = world.segmenter(scene, **rules)
    decisions = label_objects(feats, world.taxonomy.top, seg.text_bank,
                              competitors=seg.policy.competitors(world.taxonomy), scoring=seg.policy.scoring)
    out: dict[str, list[bool]] = defaultdict(list)
    for obj, d in zip(objects, decisions, strict=True):
        for level in range(1, len(obj.path) + 1):
            out[f"object L{level}"].append(d.node is not None and tuple(d.node.path[:level]) == obj.path[:level])
    out["part"] = _own_crop_parts(world, scene, seg, objects, decisions)
    return out


def own_crop_query_hits(world: CLIPLikeWorld, scene, free, term: str) -> list[bool]:
    """For each true object named *term*: does its own exact crop alone take *term* against the query's competitors
    (the free-text rule, ``segment(image, term)`` without a taxonomy)? The ceiling of free-text recall for any rule
    that labels a region from its own crop."""
    objects, feats = object_crops(world, scene)
    named = [k for k, o in enumerate(objects) if len(o.path) > 1 and o.path[1] == term]
    if not named:
        return []
    flat = query_taxonomy([term], free.policy.words())
    decisions = label_objects(feats[named], flat.top, free.text_bank, competitors=free.policy.competitors(flat),
                              scoring=free.policy.scoring, min_confidence=free.policy.min_confidence, deep=False)
    return [d.node is not None for d in decisions]


def _own_crop_parts(world: CLIPLikeWorld, scene, seg, objects: list, decisions: list) -> list[bool]:
    from clipsam.core.crops import crop_region

    owner_of = {scene.instances.index(o): d for o, d in zip(objects, decisions, strict=True)}
    parts = []
    for part in (s for s in scene.instances if s.kind == "part"):
        j = part.parent
        while j is not None and scene.instances[j].kind == "part":
            j = scene.instances[j].parent
        if j in owner_of:
            parts.append((part, owner_of[j]))
    if not parts:
        return []
    emb = world.embedder
    emb.scene = scene
    feats = emb.embed_images([crop_region(scene.image, M.decode(p.rle), M.bbox_xywh(p.rle), size=emb.image_size)
                              for p, _ in parts])
    hits = []
    for (part, owner), feat in zip(parts, feats, strict=True):
        if owner.node is None:
            hits.append(False)
            continue
        d, kind = _part_or_object(feat[None], owner, world.taxonomy, seg.text_bank, seg.policy, True, True)
        hits.append(kind == "part" and d.node is not None and tuple(d.node.path) == part.path)
    return hits


def grid(seeds: int, scenes: int, first_seed: int, noises: list[float], rules: dict) -> list[tuple[str, float, dict]]:
    """:func:`measure` over :data:`GRID` at each crop noise."""
    return [(name, noise, measure(WorldParams(crop_noise=noise, **extra), rules, seeds, scenes, first_seed))
            for noise in noises for name, extra in GRID]


def margins(seeds: int, scenes: int) -> dict[str, list[float]]:
    """Evidence differences (inner - outer, logits on the inner object's name, :func:`evidence`) for nested
    proposals: *same object* pairs (a half, a part or a near-duplicate inside the whole object) and *union* pairs
    (an object inside the union of it and what it lies on)."""
    policy = LabelPolicy()
    diffs: dict[str, list[float]] = {"same object": [], "union": []}
    for seed in range(seeds):
        world = CLIPLikeWorld(seed)
        for k in range(scenes):
            scene = world.scene(k)
            seg = world.segmenter(scene, taxonomy=None)
            regions = seg.segment_everything(scene.image, with_embeddings=True, label=False).regions
            terms = basic_terms(scene)
            if not len(regions) or not terms:
                continue
            flat = query_taxonomy(terms, policy.words())
            ev = np.stack([evidence(regions.embeddings, node, seg.text_bank) for node in flat.top], axis=1)
            objects = [s for s in scene.instances if s.kind == "object"]
            obj_iou = M.iou_matrix(list(regions.rles), [s.rle for s in objects])
            union_iou = (M.iou_matrix(list(regions.rles), list(scene.unions)).max(axis=1) if scene.unions
                         else np.zeros(len(regions)))
            share = M.contained_share(list(regions.rles))
            for i, j in zip(*np.nonzero(share >= 0.9), strict=True):  # i inside j
                if i == j:
                    continue
                if union_iou[j] >= 0.9 and obj_iou[i].max() >= 0.8:
                    kind, obj = "union", int(obj_iou[i].argmax())
                elif union_iou[j] < 0.9 and obj_iou[j].max() >= 0.8:
                    kind, obj = "same object", int(obj_iou[j].argmax())
                else:
                    continue
                t = terms.index(objects[obj].path[1])
                diffs[kind].append(float(ev[i, t] - ev[j, t]))
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--scenes", type=int, default=5)
    ap.add_argument("--margins", action="store_true", help="measure the union rule's margin instead")
    ap.add_argument("--every-region", action="store_true", help="judge every labelled region (precision per kind, "
                    "confident wrong labels, reliability table) instead")
    ap.add_argument("--first-seed", type=int, default=0, help="with --every-region: seeds from here (held-out worlds)")
    ap.add_argument("--hypernym", type=float, default=WorldParams.hypernym, help="world's hypernym mixing weight")
    ap.add_argument("--crop-noise", type=float, default=WorldParams.crop_noise,
                    help="weight of the crops' random part (default %(default)s: 0.025 cosine of noise per text; "
                         "0.95, the most there is room for: 0.042)")
    ap.add_argument("--copies", type=int, default=1, help="instances of one category per scene (2 or 4)")
    ap.add_argument("--pieces", type=int, default=0, help="pieces SAM proposes per object (0: its usual few)")
    ap.add_argument("--grid", action="store_true", help="every measure of issue 23 for the default rules across the "
                    "world settings (hypernym weight, copies, pieces) at crop noise 0.57 and 0.95")
    ap.add_argument("--noises", type=float, nargs="+", default=[0.57, 0.95], help="with --grid: the crop noises")
    ap.add_argument("--rules", default="default", choices=sorted(RULES), help="with --grid: the rule set")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    if args.grid:
        rows = grid(args.seeds, args.scenes, args.first_seed, args.noises, RULES[args.rules])
        if args.json:
            print(json.dumps([{"world": n, "crop noise": c, **r} for n, c, r in rows], indent=2))
            return
        _print_grid(rows, args)
        print(f"({time.perf_counter() - start:.0f} s)")
        return
    if args.margins:
        diffs = margins(args.seeds, args.scenes)
        for name, values in diffs.items():
            v = np.asarray(values)
            q = np.percentile(v, [5, 25, 50, 75, 95, 99]) if len(v) else [float("nan")] * 6
            print(f"{name:12s} n={len(v):4d}  p5 {q[0]:6.2f}  p25 {q[1]:6.2f}  p50 {q[2]:6.2f}  p75 {q[3]:6.2f}"
                  f"  p95 {q[4]:6.2f}  p99 {q[5]:6.2f}  (logits, inner - outer)")
        for m in (2.0, 3.0, 4.0, 4.5, 5.0, 6.0):
            same = np.mean(np.asarray(diffs["same object"]) > m) if diffs["same object"] else float("nan")
            union = np.mean(np.asarray(diffs["union"]) > m) if diffs["union"] else float("nan")
            print(f"margin {m:3.1f}: same-object pairs over it {same:6.1%}   union pairs over it {union:6.1%}")
        return
    params = WorldParams(crop_noise=args.crop_noise, hypernym=args.hypernym, copies=args.copies, pieces=args.pieces)
    if args.every_region:
        report = every_region(args.seeds, args.scenes, params, args.first_seed)
        if args.json:
            print(json.dumps(report, indent=2))
            return
        for name, row in report.items():
            kinds = "  ".join(f"{k} {row[f'precision {k}']:.3f} (n={row[f'n {k}']})" for k in REGION_KINDS)
            print(f"{name:9s} precision {row['precision']:.3f} over {row['labelled']} labelled regions; {kinds}; "
                  f"confident wrong {row['confident wrong']} (pieces {row['confident wrong pieces']})")
            print("          reliability: " + "  ".join(f"{b['bin']} {b['right']:.2f} (n={b['regions']})"
                                                     for b in row["reliability"]))
        print(f"({time.perf_counter() - start:.0f} s)")
        return
    table = run(args.seeds, args.scenes, params)
    if args.json:
        print(json.dumps(table, indent=2))
        return
    cols = ["precision", "recall", "union returned", *LEVELS]
    print(f"{args.seeds} seeds x {args.scenes} scenes, crop noise {args.crop_noise}, "
          f"{time.perf_counter() - start:.0f} s")
    print("| rules | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.3f}" for c in cols) + " |")
    counts = table["default"]
    print("instances per level: " + ", ".join(f"{level} {counts[f'n {level}']}" for level in LEVELS))


def _cell(row: dict, col: str) -> str:
    value = f"{row.get(col, float('nan')):.3f}"
    return f"{value} ({row[f'ceiling {col}']:.3f})" if f"ceiling {col}" in row else value


def _print_grid(rows: list[tuple[str, float, dict]], args: argparse.Namespace) -> None:
    cols = ["precision", "object L1", "object L2", "object L3", "part", "free precision", "free recall"]
    print(f"rules {args.rules}, seeds {args.first_seed}-{args.first_seed + args.seeds - 1} x {args.scenes} scenes")
    print("| world | crop noise | labelled | " + " | ".join(cols) + " | wrong, score >= 0.5 (pieces) |")
    print("| --- " * (len(cols) + 4) + "|")
    for name, noise, row in rows:
        print(f"| {name} | {noise} | {row['labelled']} | " + " | ".join(_cell(row, c) for c in cols)
              + f" | {row['confident wrong']} ({row['confident wrong pieces']}) |")
    print("\nobject L1 / L2 / L3 in parentheses: the same objects labelled from their own exact crop alone "
          "(the ceiling of a rule that reads one crop); part: each part from its own crop inside its object's "
          "own-crop label; free recall: each object named by the query from its own crop alone.")
    print("\nreliability (share right per score bin), default world:")
    for name, noise, row in rows:
        if name == "default":
            print(f"  noise {noise}: " + "  ".join(f"{b['bin']} {b['right']:.2f} (n={b['regions']})"
                                                  for b in row["reliability"]))


if __name__ == "__main__":
    main()
