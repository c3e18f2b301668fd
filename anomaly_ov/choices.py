"""The closed vocabularies shared by params.yaml, the dataset readers, the registry and the CLI, declared once.

Each vocabulary is a ``Literal`` (what pydantic validates params against and a type checker understands);
:func:`choices` turns one into a ``StrEnum`` so that typer lists the values in ``--help`` and completes them.
This module imports nothing heavy: the CLI builds its options from it at import time.

Adding a dataset format: add its name to :data:`ImageFormat` (or :data:`PointCloudFormat` for point clouds that
are rendered to views) and its reader to ``anomaly_ov.data.sources.READERS``; a unit test checks the two agree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

#: Dataset layouts read straight from image files.
ImageFormat = Literal["mvtec", "visa", "meta_json", "folder", "bmad"]
#: Point-cloud dataset layouts; their readers render multi-view images first.
PointCloudFormat = Literal["mvtec3d", "real3d", "shapenet"]
#: Every dataset layout a source in params.yaml (or ``--format`` on the command line) may name.
SourceFormat = Literal[ImageFormat, PointCloudFormat]
#: What a source may be used for: ``train`` (training) or ``eval`` (zero-shot evaluation only).
Role = Literal["train", "eval"]
#: What kind of images a source holds.
Modality = Literal["industrial", "medical", "3d"]
#: Dataset splits written by the converters (BMAD layout names).
Split = Literal["train", "valid", "test"]
#: Image labels in the manifest and the instruction records.
Label = Literal["normal", "anomaly"]
#: Model-registry aliases, in promotion order.
RegistryAlias = Literal["candidate", "staging", "production"]


def values(vocabulary: object) -> tuple[str, ...]:
    """The values of a ``Literal`` vocabulary, nested literals flattened, in declaration order."""
    return tuple(get_args(vocabulary))


def choices(name: str, vocabulary: object) -> type[StrEnum]:
    """A ``StrEnum`` named ``name`` whose members are the vocabulary's values (``member.value == member``).

    A type checker cannot see a class built at runtime: an annotation that uses it carries
    ``# type: ignore[valid-type]``, a default is written ``Choice("value")`` and a member is read with ``str()``.
    """
    return StrEnum(name, [(value, value) for value in values(vocabulary)])  # type: ignore[return-value]
