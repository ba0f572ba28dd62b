"""The free-text vocabulary: the real nouns a query word has to beat, so that a region is called "cat" only when it
looks more like a cat than like a sofa, a car or a wall. Pure Python; no torch.

The vocabulary is every label of the shipped ``everyday`` taxonomy (COCO's 80 classes, subtypes and part names)
plus ``stuff`` (COCO-Stuff's stuff classes and common LVIS-style objects). What a query must not compete against
is taken out: its own synonyms, and -- where ``everyday`` knows the word -- its hypernyms (a cat *is* an animal)
and its hyponyms (a kitten *is* a cat), whose probability counts *for* the query instead (CHiLS-style).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .taxonomy import Taxonomy, TaxonomyNode, load_taxonomy

__all__ = ["Entry", "competitors", "default_vocabulary", "normal", "query_taxonomy"]

_SPLIT = re.compile(r"[\s_\-]+")


def normal(text: str) -> str:
    """A label's comparison key: lower case, single spaces, the last word made singular (``"Sofa Cushions"`` ->
    ``"sofa cushion"``, ``"buses"`` -> ``"bus"``, ``"ponies"`` -> ``"pony"``)."""
    words = [w for w in _SPLIT.split(text.strip().lower()) if w]
    if not words:
        return ""
    last = words[-1]
    if len(last) > 4 and last.endswith("ies"):
        last = last[:-3] + "y"
    elif len(last) > 3 and last.endswith(("ses", "xes", "ches", "shes")):
        last = last[:-2]
    elif len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        last = last[:-1]
    return " ".join([*words[:-1], last])


@dataclass(frozen=True, eq=False)
class Entry:
    """One vocabulary word: its name, its prompts (synonyms), and its node in ``everyday`` when it has one (then
    its hypernyms and hyponyms are known)."""

    name: str
    prompts: tuple[str, ...]
    node: TaxonomyNode | None = None

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(normal(t) for t in (self.name, *self.prompts))


@lru_cache(maxsize=1)
def default_vocabulary() -> tuple[Entry, ...]:
    """``everyday``'s object labels, its part names (once each), then ``stuff``; one entry per name."""
    everyday, stuff = load_taxonomy("everyday"), load_taxonomy("stuff")
    out: list[Entry] = []
    seen: set[str] = set()

    def add(entry: Entry) -> None:
        if normal(entry.name) not in seen:
            seen.add(normal(entry.name))
            out.append(entry)

    for node in everyday:
        if not node.is_part:
            add(Entry(node.name, node.prompts, node))
    for node in everyday:
        if node.is_part:
            add(Entry(node.name, (node.name,)))
    for node in stuff:
        add(Entry(node.name, node.prompts))
    return tuple(out)


def _related(entries: Iterable[Entry]) -> set[str]:
    """Names of the hypernyms and hyponyms (in ``everyday``) of *entries*."""
    out: set[str] = set()
    for entry in entries:
        if entry.node is None:
            continue
        out.update(normal(a.name) for a in entry.node.ancestors())
        out.update(normal(n.name) for n in entry.node.walk() if not n.is_part)
    return out


def _named(words: Iterable[str], vocabulary: Sequence[Entry]) -> list[Entry]:
    keys = {normal(w) for w in words}
    return [e for e in vocabulary if e.keys & keys]


def query_taxonomy(terms: Sequence[str], vocabulary: Sequence[Entry] = ()) -> Taxonomy:
    """Free-text *terms* as a taxonomy: one top-level node per term, with the term's hyponyms from *vocabulary* as
    its children (``animal`` -> cat, dog …), so their probability counts for the term."""
    term_keys = {normal(t) for t in terms}
    nodes = []
    for term in terms:
        hypo: dict[str, Entry] = {}
        for entry in _named([term], vocabulary):
            if entry.node is None:
                continue
            for n in entry.node.walk():
                key = normal(n.name)
                if n is not entry.node and not n.is_part and key not in term_keys and key not in hypo:
                    hypo[key] = Entry(n.name, n.prompts, n)
        children = [{"name": e.name, "prompts": list(e.prompts)} for e in hypo.values()]
        nodes.append({"name": term, "prompts": [term], **({"children": children} if children else {})})
    return Taxonomy.from_dict({"name": "query", "nodes": nodes}, origin="<query>")


def competitors(taxonomy: Taxonomy, vocabulary: Sequence[Entry], *, others: Taxonomy | None = None
                ) -> list[tuple[str, ...]]:
    """Prompt sets that compete with *taxonomy*'s labels: the *vocabulary* entries (and the object labels of
    *others*, a second taxonomy) that are neither named by *taxonomy* nor hypernyms or hyponyms of what it names.
    A label the vocabulary does not know, of several words, also covers its head noun ("striped cat": cat)."""
    covered_words = {normal(t) for n in taxonomy for t in (n.name, *n.prompts)}
    covered = _named(covered_words, vocabulary)
    known = {k for e in covered for k in e.keys}
    # a phrase the vocabulary does not know ("striped cat") is a kind of its head noun ("cat")
    covered_words |= {w.rsplit(" ", 1)[-1] for w in covered_words - known if " " in w}
    covered = _named(covered_words, vocabulary)
    banned = covered_words | _related(covered)
    pool: list[tuple[str, ...]] = [e.prompts for e in vocabulary if not (e.keys & banned)]
    if others is not None:
        pool += [n.prompts for n in others
                 if not n.is_part and not ({normal(p) for p in (n.name, *n.prompts)} & banned)]
    return list(dict.fromkeys(pool))
