"""Label taxonomies: is-a trees of labels with part-of children, loaded from YAML. Pure Python; no torch.

File format (documented in README)::

    name: everyday                 # optional; defaults to the file name
    description: COCO classes …    # optional
    source: where the list comes from
    include: [parts.yaml]          # optional: other files merged in (same path = same node)
    nodes:
      - name: animal
        prompts: [animal]          # texts given to CLIP; default [name]
        children:                  # is-a
          - name: dog
            prompts: [dog, domestic dog]
            children: [puppy]      # a bare string is a node with just a name
            parts:                 # part-of (inherited by is-a children)
              - name: head
                parts: [ear, eye]

Nodes are addressed by path (``animal/dog/puppy``, ``animal/dog/head``); the same part name may appear under
different wholes. Within one file, two nodes of one parent may not share a name; across included files,
nodes with the same path are merged.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ClipsamError, TaxonomyError
from ..files import read_text_capped

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "Taxonomy", "TaxonomyNode", "find_taxonomy", "load_taxonomy",
           "shipped_taxonomies"]

_SHIPPED_DIR = Path(__file__).resolve().parent.parent / "prompts"
_NODE_KEYS = {"name", "prompts", "children", "parts", "description"}

#: Largest taxonomy file read (bytes): WordNet's whole noun hierarchy fits in a few MB.
MAX_FILE_BYTES = 16_000_000
#: Most labels a taxonomy may hold, includes merged (LVIS has 1,203; ImageNet-21k about 21,000).
MAX_NODES = 100_000
#: Deepest nesting of children and parts (WordNet's deepest noun chain is under 20 levels).
MAX_DEPTH = 64


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a 565-byte file of nested aliases ("billion laughs")
    expands to millions of nodes, and aliases can also build cycles. Anchors alone are harmless."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in taxonomies: they can expand "
                "exponentially or form a cycle; write the nodes out, or share them with include:", event.start_mark)
        return super().compose_node(parent, index)


@dataclass(frozen=True, eq=False, repr=False)
class TaxonomyNode:
    """One label.

    Attributes:
        name: the label (``dog``).
        path: names from the top level down to this node (``("animal", "dog")``); ``()`` for the root.
        prompts: texts that describe it to CLIP (synonyms); parts default to ``"<whole> <part>"`` and the name.
        children: is-a children (``puppy`` under ``dog``).
        parts: part-of children (``head`` under ``dog``).
        is_part: True for parts and everything under them.
        description: free text.
    """

    name: str
    path: tuple[str, ...]
    prompts: tuple[str, ...]
    children: tuple[TaxonomyNode, ...] = ()
    parts: tuple[TaxonomyNode, ...] = ()
    is_part: bool = False
    description: str = ""
    parent: TaxonomyNode | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"TaxonomyNode({self.path_str!r}{', part' if self.is_part else ''})"

    @property
    def path_str(self) -> str:
        return "/".join(self.path)

    @property
    def depth(self) -> int:
        return len(self.path)

    def ancestors(self) -> list[TaxonomyNode]:
        """Nodes above this one, nearest first (root excluded)."""
        out, node = [], self.parent
        while node is not None and node.path:
            out.append(node)
            node = node.parent
        return out

    def is_a(self, other: TaxonomyNode) -> bool:
        """True if this node is *other* or lies below it through is-a links only (a puppy is a dog and an
        animal; a dog's head is not a dog)."""
        node: TaxonomyNode | None = self
        while node is not None:
            if node is other:
                return True
            parent = node.parent
            if parent is None or not any(c is node for c in parent.children):
                return False
            node = parent
        return False

    def object_node(self) -> TaxonomyNode:
        """For a part, the whole it belongs to; for an object, itself."""
        node = self
        while node.is_part and node.parent is not None:
            node = node.parent
        return node

    def all_parts(self) -> list[TaxonomyNode]:
        """Parts of this object, sub-parts included; an is-a child without parts inherits its parent's."""
        node: TaxonomyNode | None = self
        while node is not None and node.path:
            if node.parts:
                out: list[TaxonomyNode] = []
                stack = list(node.parts)
                while stack:
                    part = stack.pop(0)
                    out.append(part)
                    stack.extend(part.parts + part.children)
                return out
            node = node.parent
        return []

    def walk(self) -> Iterator[TaxonomyNode]:
        """This node and everything below it, depth first (children before parts)."""
        yield self
        for child in self.children + self.parts:
            yield from child.walk()


class Taxonomy:
    """A tree of labels. Build with :func:`load_taxonomy`, :meth:`from_labels` or :meth:`from_dict`."""

    def __init__(self, root: TaxonomyNode, *, name: str, description: str = "", source: str = "",
                 origin: str = "") -> None:
        self.root = root
        self.name = name
        self.description = description
        self.source = source
        self.origin = origin
        self._by_path = {n.path: n for n in root.walk()}

    def __repr__(self) -> str:
        return f"Taxonomy({self.name!r}, {len(self) } labels)"

    def __len__(self) -> int:
        return len(self._by_path) - 1

    def __iter__(self) -> Iterator[TaxonomyNode]:
        return (n for n in self.root.walk() if n.path)

    @property
    def top(self) -> tuple[TaxonomyNode, ...]:
        """The top-level object categories."""
        return self.root.children

    @property
    def is_flat(self) -> bool:
        return all(not n.children and not n.parts for n in self.root.children)

    def get(self, path: str | Sequence[str]) -> TaxonomyNode:
        """The node at *path* (``"animal/dog"`` or a tuple); raises :class:`TaxonomyError` if absent."""
        key = tuple(p for p in path.split("/") if p) if isinstance(path, str) else tuple(path)
        try:
            return self._by_path[key]
        except KeyError:
            raise TaxonomyError(f"taxonomy {self.name!r} has no label at path {'/'.join(key)!r}") from None

    def find(self, label: str) -> list[TaxonomyNode]:
        """Nodes whose name, path or a prompt equals *label* (case-insensitive), objects before parts."""
        key = label.strip().lower()
        if "/" in key:
            node = self._by_path.get(tuple(p for p in key.split("/") if p))
            return [node] if node else [n for n in self if n.path_str.lower() == key]
        hits = [n for n in self if n.name.lower() == key]
        if not hits:
            hits = [n for n in self if any(p.lower() == key for p in n.prompts)]
        return sorted(hits, key=lambda n: (n.is_part, n.depth, n.path))

    def search(self, word: str) -> list[TaxonomyNode]:
        """Nodes whose name or a prompt contains *word* (case-insensitive)."""
        key = word.strip().lower()
        return [n for n in self if key in n.name.lower() or any(key in p.lower() for p in n.prompts)]

    def leaves(self) -> list[TaxonomyNode]:
        return [n for n in self if not n.children and not n.is_part]

    @classmethod
    def from_labels(cls, labels: Sequence[str], name: str = "query") -> Taxonomy:
        """A flat taxonomy: every label a top-level object."""
        return cls.from_dict({"name": name, "nodes": [str(label) for label in labels]}, origin="<labels>")

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "<dict>") -> Taxonomy:
        """Build from the parsed YAML structure (``include`` is not resolved here)."""
        if not isinstance(data, dict):
            raise TaxonomyError(f"{origin}: a taxonomy must be a mapping with a 'nodes' list, "
                                f"got {type(data).__name__}")
        nodes = data.get("nodes", [])
        if not isinstance(nodes, list) or not nodes:
            raise TaxonomyError(f"{origin}: 'nodes' must be a non-empty list")
        merged = _merge_level([], nodes, origin, ())
        count = _count(merged)
        if count > MAX_NODES:
            raise TaxonomyError(f"{origin}: {count:,} labels is over the limit of {MAX_NODES:,}")
        root = _build(merged, origin=origin)
        return cls(root, name=str(data.get("name") or Path(origin).stem), description=str(data.get("description", "")),
                   source=str(data.get("source", "")), origin=origin)

    def to_dict(self) -> dict[str, Any]:
        def node(n: TaxonomyNode) -> dict[str, Any]:
            d: dict[str, Any] = {"name": n.name, "path": n.path_str, "prompts": list(n.prompts)}
            if n.children:
                d["children"] = [node(c) for c in n.children]
            if n.parts:
                d["parts"] = [node(p) for p in n.parts]
            return d

        return {"name": self.name, "description": self.description, "source": self.source,
                "nodes": [node(n) for n in self.root.children]}


def shipped_taxonomies() -> dict[str, Path]:
    """The taxonomies that come with clipsam: ``{name: path}``."""
    return {p.stem: p for p in sorted(_SHIPPED_DIR.glob("*.yaml"))}


def find_taxonomy(name: str | None) -> Taxonomy | None:
    """The taxonomy a stored result names (a shipped name or a file that still exists), or ``None`` when it cannot
    be loaded (made in memory, moved, or malformed)."""
    if not name:
        return None
    try:
        return load_taxonomy(name)
    except TaxonomyError:
        return None


def load_taxonomy(source: str | os.PathLike | Taxonomy) -> Taxonomy:
    """Load a shipped taxonomy by name (``everyday``) or a YAML file by path.

    Raises:
        TaxonomyError: unknown name, unreadable file, bad YAML, or a malformed node (the message names the file
            and the node's path).
    """
    if isinstance(source, Taxonomy):
        return source
    text = str(source)
    shipped = shipped_taxonomies()
    if text in shipped and not Path(text).exists():
        path = shipped[text]
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise TaxonomyError(
                f"{text}: no such taxonomy file, and not a shipped taxonomy ({', '.join(shipped)})"
            )
    data = _read_with_includes(path.resolve(), stack=())
    return Taxonomy.from_dict(data, origin=str(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:  # a regular UTF-8 file under the size limit (a FIFO named as a taxonomy must not hang)
        text = read_text_capped(path, "taxonomy file", MAX_FILE_BYTES)
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except ClipsamError as exc:
        raise TaxonomyError(str(exc)) from None
    except RecursionError:
        raise TaxonomyError(f"{path}: nested too deeply (taxonomies may be at most {MAX_DEPTH} levels deep)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TaxonomyError(f"{path}:{where}: invalid YAML ({problem})") from None
    except OSError as exc:
        raise TaxonomyError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise TaxonomyError(f"{path}: a taxonomy file must be a mapping with a 'nodes' list")
    return data


def _include_path(path: Path, inc: str) -> Path:
    """Where ``include: [inc]`` of the file *path* points: a file beside it (``inc`` or ``inc.yaml``), else a shipped
    taxonomy of that name (``parts``, ``parts.yaml``), so that any file can build on clipsam's own."""
    here = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
    shipped = shipped_taxonomies()
    for candidate in (here, path.parent / f"{inc}.yaml"):
        if candidate.is_file():
            return candidate
    name = inc[:-5] if inc.endswith(".yaml") else inc
    if name in shipped:
        return shipped[name]
    raise TaxonomyError(f"{path}: include {inc!r} not found (looked for {here}, and for a shipped taxonomy: "
                        f"{', '.join(shipped)})")


def _read_with_includes(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        raise TaxonomyError(f"{stack[-1]}: include cycle {chain}")
    data = _read_yaml(path)
    includes = data.get("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    nodes: list[Any] = []
    for inc in includes:
        inc_path = _include_path(path, str(inc))
        included = _read_with_includes(inc_path.resolve(), (*stack, path))
        nodes = _merge_level(nodes, included.get("nodes", []), str(inc_path), ())
    own = data.get("nodes", [])
    if not isinstance(own, list):
        raise TaxonomyError(f"{path}: 'nodes' must be a list")
    merged = dict(data)
    merged["nodes"] = _merge_level(nodes, own, str(path), ())
    return merged


#: Names no label may have: the categories of regions that match no label (a label of that name would share their
#: COCO category name, which Datumaro refuses, and its regions would be filed under them).
RESERVED_NAMES = frozenset({"unknown", "unknown part"})


def _normalise(item: Any, origin: str, parent: tuple[str, ...], seen: frozenset[int]) -> dict[str, Any]:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        raise TaxonomyError(f"{origin}: node under {'/'.join(parent) or 'top level'} must be a name or a mapping, "
                            f"got {type(item).__name__}")
    if id(item) in seen:
        raise TaxonomyError(f"{origin}: cycle at {'/'.join(parent)} (a node contains itself through a YAML alias)")
    name = item.get("name")
    where = "/".join(parent) or "top level"
    if name is None or not str(name).strip():
        raise TaxonomyError(f"{origin}: node with an empty name under {where}")
    name = str(name).strip()
    if len(parent) >= MAX_DEPTH:
        raise TaxonomyError(f"{origin}: node {name!r} is nested more than {MAX_DEPTH} levels deep (under "
                            f"{'/'.join(parent[:3])}/…); taxonomies may be at most {MAX_DEPTH} levels deep")
    if "/" in name:
        raise TaxonomyError(f"{origin}: node name {name!r} under {where} may not contain '/'")
    if name.casefold() in RESERVED_NAMES:
        raise TaxonomyError(f"{origin}: node name {name!r} under {where} is reserved for regions that match no label "
                            "(clipsam's 'unknown' and 'unknown part' categories); rename it, e.g. 'other'")
    unknown = set(item) - _NODE_KEYS
    if unknown:
        raise TaxonomyError(f"{origin}: node {'/'.join((*parent, name))} has unknown key(s) {sorted(unknown)}; "
                            f"allowed: {sorted(_NODE_KEYS)}")
    prompts = item.get("prompts", [])
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise TaxonomyError(f"{origin}: node {'/'.join((*parent, name))}: 'prompts' must be a list of non-empty texts")
    path = (*parent, name)
    inner = seen | {id(item)}
    out = {"name": name, "prompts": [p.strip() for p in prompts], "description": str(item.get("description", "")),
           "children": [], "parts": []}
    for key in ("children", "parts"):
        value = item.get(key, []) or []
        if not isinstance(value, list):
            raise TaxonomyError(f"{origin}: node {'/'.join(path)}: '{key}' must be a list")
        out[key] = [_normalise(v, origin, path, inner) for v in value]
    names = [c["name"] for c in out["children"]] + [p["name"] for p in out["parts"]]
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise TaxonomyError(f"{origin}: node {'/'.join(path)} has duplicate child or part name(s) {dup}")
    return out


def _merge_level(base: list[Any], extra: list[Any], origin: str, parent: tuple[str, ...]) -> list[dict[str, Any]]:
    """Merge node lists: nodes of *extra* with a name already in *base* are merged into it."""
    out = [b if isinstance(b, dict) and "parts" in b and "children" in b else _normalise(b, origin, parent, frozenset())
           for b in base]
    normal = [_normalise(e, origin, parent, frozenset()) for e in extra]
    names = [n["name"] for n in normal]
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise TaxonomyError(f"{origin}: duplicate name(s) {dup} under {'/'.join(parent) or 'top level'}")
    index = {n["name"]: n for n in out}
    for node in normal:
        if node["name"] in index:
            target = index[node["name"]]
            target["prompts"] = target["prompts"] + [p for p in node["prompts"] if p not in target["prompts"]]
            target["description"] = target["description"] or node["description"]
            path = (*parent, node["name"])
            target["children"] = _merge_level(target["children"], node["children"], origin, path)
            target["parts"] = _merge_level(target["parts"], node["parts"], origin, path)
        else:
            out.append(node)
            index[node["name"]] = node
    return out


def _count(nodes: list[dict[str, Any]]) -> int:
    total, stack = 0, list(nodes)
    while stack:
        node = stack.pop()
        total += 1
        stack.extend(node["children"])
        stack.extend(node["parts"])
    return total


def _build(nodes: list[dict[str, Any]], origin: str) -> TaxonomyNode:
    root = TaxonomyNode(name="", path=(), prompts=())

    def make(d: dict[str, Any], parent: TaxonomyNode, is_part: bool) -> TaxonomyNode:
        path = (*parent.path, d["name"])
        prompts = d["prompts"]
        if not prompts:
            whole = parent.object_node().name if is_part and parent.path else ""
            prompts = [f"{whole} {d['name']}", d["name"]] if whole and whole != d["name"] else [d["name"]]
        node = TaxonomyNode(name=d["name"], path=path, prompts=tuple(prompts), is_part=is_part,
                            description=d["description"], parent=parent)
        object.__setattr__(node, "children", tuple(make(c, node, is_part) for c in d["children"]))
        object.__setattr__(node, "parts", tuple(make(p, node, True) for p in d["parts"]))
        return node

    object.__setattr__(root, "children", tuple(make(n, root, False) for n in nodes))
    if not root.children:
        raise TaxonomyError(f"{origin}: taxonomy has no nodes")
    return root
