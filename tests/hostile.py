"""Hostile and broken image files for the input-hardening tests (tiny on disk, cheap to write)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels but whose data is empty (bytes, ~60)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def write_declared(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_declaring(width, height))
    return path


def write_png(path: Path, size: tuple[int, int] = (40, 40), value: int = 120, mode: str = "RGB") -> Path:
    """A small valid PNG (``size`` = width, height), noise so that no two files have the same pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    array = np.zeros((height, width), np.uint8)
    array[: height // 2, : width // 2] = 255
    Image.fromarray(array).save(path)
    return path


def write_truncated(path: Path, size: tuple[int, int] = (40, 40)) -> Path:
    """A PNG cut short: the header reads, decoding fails."""
    write_png(path, size)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_random(path: Path, n: int = 512) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def write_empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_real_large(path: Path, side: int = 15000) -> Path:
    """A genuinely ``side`` x ``side`` single-colour 1-bit PNG (15000 px: ~120 KB, written in about 2 s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (side, side), 0).save(path, compress_level=1)
    return path
