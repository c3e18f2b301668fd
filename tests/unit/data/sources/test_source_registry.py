"""The format registry: dispatch, unknown formats and formats whose reader module is not installed."""

from __future__ import annotations

import pytest

from anomaly_ov.data import sources
from anomaly_ov.data.sources import READERS, LayoutError, reader_for


def test_every_config_format_is_registered():
    from typing import get_args

    from anomaly_ov.config import SourceFormat

    assert set(get_args(SourceFormat)) == set(READERS)


def test_core_readers_resolve():
    for fmt in ("mvtec", "visa", "meta_json", "folder"):
        assert callable(reader_for(fmt))


def test_unknown_and_missing_reader(monkeypatch):
    with pytest.raises(LayoutError, match=r"unknown source format 'zip'"):
        reader_for("zip")
    monkeypatch.setitem(sources.READERS, "bmad", "anomaly_ov.data.sources.not_there:read")
    with pytest.raises(LayoutError, match=r"'bmad' is registered but its reader module .*not_there is not installed"):
        reader_for("bmad")
