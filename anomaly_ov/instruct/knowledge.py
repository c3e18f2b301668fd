"""Defect knowledge base: what a defect is, its likely causes, its impact and how to prevent it.

The knowledge lives in plain YAML files under ``anomaly_ov/instruct/knowledge/`` (one per domain: industrial,
medical, 3d) so that people can read and extend it without touching code. ``params.instruct.knowledge_path``
may name an extra YAML file (or a folder of them) whose ``categories`` and ``defects`` are merged over the
built-in ones (same keys replace, new keys add).

Lookup is forgiving: dataset-specific defect names (MVTec's ``scratch_head``, VisA's ``chip``, BMAD's
``Ungood``) resolve through aliases, then word by word, then fall back to the domain's generic entry. Wording
is category-aware: ``{object}`` / ``{material}`` / ``{noun}`` placeholders are filled from the category entry,
and ``by_category`` blocks (keyed by category or category group) replace lists for that kind of object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from anomaly_ov.errors import InputError

KNOWLEDGE_DIR = Path(__file__).with_name("knowledge")
DOMAINS: tuple[str, ...] = ("industrial", "medical", "3d")
_FIELDS = ("names", "what", "causes", "impact", "prevention")
GENERIC = "generic"


class KnowledgeError(InputError):
    """A knowledge file is malformed; the message names the file and key."""


def normalise_name(name: str) -> str:
    """"Scratch-Head " -> "scratch_head"; "macaroni2" -> "macaroni2" (digits kept; see :func:`_category_keys`)."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


@dataclass(frozen=True)
class CategoryInfo:
    """How to talk about one category: ``noun`` ("tile"), ``material`` ("ceramic"), ``group``, texture or object."""

    key: str
    noun: str
    material: str
    group: str
    texture: bool
    normal: tuple[str, ...]


@dataclass(frozen=True)
class DefectInfo:
    """Phrasings for one defect in one category, placeholders already filled."""

    key: str
    names: tuple[str, ...]
    what: tuple[str, ...]
    causes: tuple[str, ...]
    impact: tuple[str, ...]
    prevention: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def is_generic(self) -> bool:
        return self.key == GENERIC


class _Fill(dict):
    def __missing__(self, key: str) -> str:  # unknown placeholders stay visible instead of raising
        return "{" + key + "}"


class KnowledgeBase:
    """Parsed knowledge for all domains. Build with :func:`load_knowledge`."""

    def __init__(self, domains: dict[str, dict[str, Any]]) -> None:
        self._domains = domains
        self._alias: dict[str, dict[str, str]] = {}
        self._cat_alias: dict[str, dict[str, str]] = {}
        for domain, data in domains.items():
            aliases: dict[str, str] = {}
            for key, entry in data.get("defects", {}).items():
                aliases[normalise_name(key)] = key
                for alias in entry.get("aliases", []) or []:
                    aliases.setdefault(normalise_name(alias), key)
            self._alias[domain] = aliases
            cats: dict[str, str] = {}
            for key, entry in data.get("categories", {}).items():
                cats[normalise_name(key)] = key
                for alias in entry.get("aliases", []) or []:
                    cats.setdefault(normalise_name(alias), key)
            self._cat_alias[domain] = cats

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self._domains)

    def categories(self, domain: str) -> tuple[str, ...]:
        """The category keys ``domain`` describes (aliases not included)."""
        return tuple(self._domain(domain).get("categories", {}) or {})

    def defect_types(self, domain: str) -> tuple[str, ...]:
        """The defect keys ``domain`` describes (aliases and ``generic`` not included)."""
        return tuple(self._domain(domain).get("defects", {}) or {})

    def _domain(self, domain: str) -> dict[str, Any]:
        if domain not in self._domains:
            raise KeyError(f"unknown knowledge domain {domain!r}; known: {', '.join(self._domains)}")
        return self._domains[domain]

    def defect_key(self, domain: str, defect_type: str) -> str:
        """Resolve a dataset's defect name to a knowledge key (``generic`` when nothing matches)."""
        aliases = self._alias.get(domain, {})
        name = normalise_name(defect_type)
        for candidate in (name, name.rstrip("s"), re.sub(r"\d+$", "", name).strip("_")):
            if candidate in aliases:
                return aliases[candidate]
        for token in name.split("_"):
            for candidate in (token, token.rstrip("s")):
                if candidate in aliases:
                    return aliases[candidate]
        return GENERIC

    def category(self, domain: str, category: str) -> CategoryInfo:
        """Category wording; unknown categories get their own name as noun and are treated as objects."""
        data = self._domain(domain)
        cats = self._cat_alias.get(domain, {})
        name = normalise_name(category)
        key = None
        for candidate in (name, re.sub(r"\d+$", "", name).strip("_"), name.rstrip("s")):
            if candidate in cats:
                key = cats[candidate]
                break
        if key is None:
            noun = re.sub(r"\d+$", "", name).replace("_", " ").strip() or "object"
            return CategoryInfo(key=name, noun=noun, material="material" if domain != "medical" else "tissue",
                                group="", texture=False, normal=(f"a normal-looking {noun}",))
        entry = data["categories"][key]
        noun = str(entry.get("noun", key.replace("_", " ")))
        normal = tuple(entry.get("normal") or [f"a normal-looking {noun}"])
        return CategoryInfo(key=key, noun=noun, material=str(entry.get("material", "material")),
                            group=str(entry.get("group", "")), texture=bool(entry.get("texture", False)), normal=normal)

    def defect(self, domain: str, defect_type: str, category: str = "") -> DefectInfo:
        """Phrasings for ``defect_type`` on ``category`` in ``domain`` (the generic entry when unknown)."""
        data = self._domain(domain)
        key = self.defect_key(domain, defect_type)
        entry = data.get("defects", {}).get(key) if key != GENERIC else data.get("generic")
        if entry is None:
            raise KnowledgeError(f"knowledge domain {domain!r} has no `generic` entry")
        generic = data.get("generic", {})
        cat = self.category(domain, category) if category else None
        lists = {f: list(entry.get(f) or generic.get(f) or []) for f in _FIELDS}
        if cat is not None:
            overrides = entry.get("by_category", {}) or {}
            for selector in (cat.group, cat.key):
                for f, values in (overrides.get(selector) or {}).items():
                    if f in lists and values:
                        lists[f] = list(values)
        if not lists["names"]:
            lists["names"] = [normalise_name(defect_type).replace("_", " ") or "defect"]
        fill = _Fill(object=cat.noun if cat else "object", material=cat.material if cat else "material",
                     noun=cat.noun if cat else "image")
        filled = {f: tuple(str(v).format_map(fill) for v in values) for f, values in lists.items()}
        return DefectInfo(key=key, **filled)


# --------------------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KnowledgeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "domain" not in data:
        raise KnowledgeError(f"{path}: a knowledge file must be a mapping with a `domain` key (industrial|medical|3d)")
    for section in ("categories", "defects"):
        value = data.get(section, {}) or {}
        if not isinstance(value, dict):
            raise KnowledgeError(f"{path}: `{section}` must be a mapping of name -> entry")
        for name, entry in value.items():
            if not isinstance(entry, dict):
                raise KnowledgeError(f"{path}: {section}.{name} must be a mapping")
            if section == "defects":
                for f in _FIELDS:
                    if f in entry and not isinstance(entry[f], list):
                        raise KnowledgeError(f"{path}: defects.{name}.{f} must be a list of strings")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for section in ("categories", "defects"):
        merged[section] = {**(base.get(section) or {}), **(extra.get(section) or {})}
    if extra.get("generic"):
        merged["generic"] = {**(base.get("generic") or {}), **extra["generic"]}
    return merged


@lru_cache(maxsize=8)
def load_knowledge(extra_path: str | None = None) -> KnowledgeBase:
    """Built-in knowledge, merged with ``extra_path`` (a YAML file or a folder of ``*.yaml``) when given."""
    domains: dict[str, dict[str, Any]] = {}
    for path in sorted(KNOWLEDGE_DIR.glob("*.yaml")):
        data = _read_yaml(path)
        domains[str(data["domain"])] = data
    if extra_path:
        extra = Path(extra_path)
        if not extra.exists():
            raise FileNotFoundError(f"{extra}: knowledge file not found (params instruct.knowledge_path)")
        files = sorted(extra.glob("*.yaml")) + sorted(extra.glob("*.yml")) if extra.is_dir() else [extra]
        for path in files:
            data = _read_yaml(path)
            domain = str(data["domain"])
            domains[domain] = _merge(domains.get(domain, {}), data)
    return KnowledgeBase(domains)


def domain_of(modality: str) -> str:
    """Manifest modality -> knowledge domain."""
    return modality if modality in DOMAINS else "industrial"
