"""Label Studio labeling configs: write one for a taxonomy, and read what a project's config offers clipsam.

A config is XML (``<View>`` with an ``<Image>`` and control tags). clipsam reads the first ``<Image>``, its
``<BrushLabels>`` or ``<PolygonLabels>`` (where regions go), ``<Relations>`` (the ``part of`` link), a per-region
``<TextArea>`` or ``<Taxonomy>`` (the label path: text, or a choice in the taxonomy's tree) and the smart tools
(``<KeyPointLabels>``, ``<RectangleLabels>``) that send clicks and boxes. Pure Python; no torch.
"""

from __future__ import annotations

import colorsys
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from ..core.taxonomy import Taxonomy
from ..errors import ConfigError

__all__ = ["PART_OF", "LabelConfig", "label_config"]

#: the relation label a part carries to its whole
PART_OF = "part of"
#: the labels of regions that match no category, when a config offers them
UNKNOWN_LABELS = ("unknown", "unknown part")
#: names of the tags :func:`label_config` writes
IMAGE, REGIONS, PATH, CLICK, BOX = "image", "label", "label_path", "click", "box"
#: how a generated config carries each region's label path
PATH_TAGS = ("text", "taxonomy")


def _colour(name: str) -> str:
    """A stable, readable colour per label (hue from the name's hash)."""
    hue = int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:4], 16) / 0xFFFF
    r, g, b = colorsys.hls_to_rgb(hue, 0.5, 0.75)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def taxonomy_labels(taxonomy: Taxonomy, unknown: bool = True) -> list[str]:
    """Every category name of *taxonomy* once, top-down (a name that appears under several wholes, like ``head``,
    is one label; the per-region label path tells them apart), then ``unknown`` / ``unknown part``."""
    names = list(dict.fromkeys(n.name for n in taxonomy))
    return names + [u for u in UNKNOWN_LABELS if unknown and u not in names]


def _choices(taxonomy: Taxonomy) -> list[str]:
    """The taxonomy's tree as nested ``<Choice>`` elements (Label Studio's ``<Taxonomy>``), one line each."""
    children: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for node in taxonomy:
        path = tuple(node.path)
        siblings = children.setdefault(path[:-1], [])
        if path not in siblings:
            siblings.append(path)

    def walk(parent: tuple[str, ...], depth: int) -> list[str]:
        lines = []
        for path in children.get(parent, []):
            pad, value = "  " * (depth + 2), quoteattr(path[-1])
            inner = walk(path, depth + 1)
            lines += [f"{pad}<Choice value={value}>", *inner, f"{pad}</Choice>"] if inner else \
                [f"{pad}<Choice value={value}/>"]
        return lines

    return walk((), 0)


def label_config(taxonomy: Taxonomy, *, shape: str = "brush", unknown: bool = True, smart: bool = True,
                 path: str = "text") -> str:
    """A ready Label Studio labeling config for *taxonomy*: the image, ``BrushLabels`` (or ``PolygonLabels`` with
    *shape* ``polygon``) for every category, the ``part of`` relation, the label path per region (*path* ``text``: a
    text area; ``taxonomy``: a ``<Taxonomy>`` of the taxonomy's tree, where annotators can pick another path), and
    (with *smart*) the keypoint and rectangle smart tools for interactive clicks and boxes."""
    if shape not in ("brush", "polygon"):
        raise ConfigError(f"shape must be brush or polygon, got {shape!r}")
    if path not in PATH_TAGS:
        raise ConfigError(f"path must be {' or '.join(PATH_TAGS)}, got {path!r}")
    labels = taxonomy_labels(taxonomy, unknown)
    tag = "BrushLabels" if shape == "brush" else "PolygonLabels"

    def label_lines(smart_label: bool = False) -> str:
        extra = ' smart="true"' if smart_label else ""
        return "".join(f'    <Label value={quoteattr(n)} background="{_colour(n)}"{extra}/>\n' for n in labels)

    lines = ["<View>",
             f'  <Image name="{IMAGE}" value="${IMAGE}" zoom="true"/>',
             f'  <{tag} name="{REGIONS}" toName="{IMAGE}">', label_lines().rstrip("\n"), f"  </{tag}>"]
    if smart:
        lines += [f'  <KeyPointLabels name="{CLICK}" toName="{IMAGE}" smart="true" smartOnly="true">',
                  label_lines(True).rstrip("\n"), "  </KeyPointLabels>",
                  f'  <RectangleLabels name="{BOX}" toName="{IMAGE}" smart="true" smartOnly="true">',
                  label_lines(True).rstrip("\n"), "  </RectangleLabels>"]
    lines += ["  <Relations>", f"    <Relation value={quoteattr(PART_OF)}/>", "  </Relations>"]
    if path == "text":
        lines.append(f'  <TextArea name="{PATH}" toName="{IMAGE}" perRegion="true" editable="true" '
                     'displayMode="region-list" placeholder="label path (animal/dog/head)"/>')
    else:
        lines += [f'  <Taxonomy name="{PATH}" toName="{IMAGE}" perRegion="true" leafsOnly="false" '
                  'showFullPath="true" pathSeparator="/">', *_choices(taxonomy), "  </Taxonomy>"]
    lines += ["</View>", ""]
    return "\n".join(lines)


def _tree_paths(tag: ET.Element) -> frozenset[tuple[str, ...]]:
    """Every path of nested ``<Choice>`` values under a ``<Taxonomy>`` tag."""
    found: set[tuple[str, ...]] = set()

    def walk(element: ET.Element, prefix: tuple[str, ...]) -> None:
        for choice in element:
            if choice.tag == "Choice" and choice.get("value"):
                path = (*prefix, choice.get("value", ""))
                found.add(path)
                walk(choice, path)

    walk(tag, ())
    return frozenset(found)


@dataclass(frozen=True)
class LabelConfig:
    """What a project's labeling config offers clipsam.

    Attributes:
        image: the ``<Image>`` tag's name (results' ``to_name``).
        image_key: the task data key of the image (``value="$image"`` -> ``image``).
        regions: name of the ``BrushLabels`` / ``PolygonLabels`` tag regions go to (``from_name``).
        shape: ``brush`` or ``polygon``.
        labels: that tag's label values, in config order.
        relations: the ``<Relation>`` values offered (``part of`` labels the part -> whole links when present).
        path: name of a per-region ``TextArea`` for the label path, if any.
        tree: name of a per-region ``Taxonomy`` for the label path, if any, and ``tree_paths`` the paths it offers.
        clicks / boxes: names of the smart ``KeyPointLabels`` / ``RectangleLabels`` tags, if any.
    """

    image: str
    image_key: str
    regions: str
    shape: str
    labels: tuple[str, ...]
    relations: tuple[str, ...] = ()
    has_relations: bool = False
    path: str | None = None
    tree: str | None = None
    tree_paths: frozenset[tuple[str, ...]] = frozenset()
    clicks: tuple[str, ...] = field(default=())
    boxes: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, xml: str) -> LabelConfig:
        """Read a labeling config; a config clipsam cannot write regions into is a :class:`ConfigError`."""
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as e:
            raise ConfigError(f"the Label Studio labeling config is not valid XML: {e}") from None
        tags = list(root.iter())
        images = [t for t in tags if t.tag == "Image" and t.get("name")]
        if not images:
            raise ConfigError("the Label Studio labeling config has no <Image> tag: clipsam labels images")
        image = images[0]
        value = image.get("value", "")
        if not value.startswith("$"):
            raise ConfigError(f"the <Image> tag's value must name a task field ($image), got {value!r}")
        name = image.get("name", "")
        mine = [t for t in tags if t.get("toName") and name in t.get("toName", "").split(",")]
        shapes = [t for t in mine if t.tag in ("BrushLabels", "PolygonLabels")]
        if not shapes:
            raise ConfigError(f"the Label Studio labeling config has no <BrushLabels> or <PolygonLabels> for the "
                              f"image {name!r}: clipsam's regions go there")
        regions = shapes[0]
        labels = tuple(dict.fromkeys(lb.get("value", "") for lb in regions.iter("Label") if lb.get("value")))
        if not labels:
            raise ConfigError(f"<{regions.tag} name={regions.get('name')!r}> has no <Label> values")
        rel = [r.get("value", "") for t in tags if t.tag == "Relations" for r in t.iter("Relation")]
        per_region = [t for t in mine if t.get("perRegion") in ("true", "1")]
        paths = [t.get("name") for t in per_region if t.tag == "TextArea"]
        trees = [t for t in per_region if t.tag == "Taxonomy"]
        return cls(image=name, image_key=value[1:], regions=regions.get("name", ""),
                   shape="brush" if regions.tag == "BrushLabels" else "polygon", labels=labels,
                   relations=tuple(r for r in rel if r), has_relations=any(t.tag == "Relations" for t in tags),
                   path=paths[0] if paths else None, tree=trees[0].get("name") if trees else None,
                   tree_paths=_tree_paths(trees[0]) if trees else frozenset(),
                   clicks=tuple(t.get("name", "") for t in mine if t.tag == "KeyPointLabels"),
                   boxes=tuple(t.get("name", "") for t in mine if t.tag == "RectangleLabels"))

    def tree_path(self, label_path: Sequence[str]) -> list[str] | None:
        """The longest start of *label_path* the project's ``<Taxonomy>`` offers (``None``: none, or no tree)."""
        for n in range(len(label_path), 0, -1):
            if tuple(label_path[:n]) in self.tree_paths:
                return list(label_path[:n])
        return None

    def find(self, name: str | None) -> str | None:
        """The project's label for a clipsam label name (case-insensitive), or ``None``."""
        if not name:
            return None
        lower = {lb.lower(): lb for lb in self.labels}
        return lower.get(name.lower())

    def label_for(self, label: str | None, label_path: tuple[str, ...], kind: str = "object") -> str | None:
        """The project label of a region: an object's deepest path element the project has (``puppy`` -> ``dog``
        when the project has dog but not puppy), a part's own label only (a dog's head is no dog), else its own
        label (``unknown``, ``unknown part``), else ``None``."""
        if kind not in ("part", "unknown part"):
            for name in reversed(label_path):
                hit = self.find(name)
                if hit is not None:
                    return hit
        return self.find(label)
