"""The project's PCD / PLY readers against maintained ones (pypcd4 for PCD, plyfile for PLY): same values, and speed.

    .venv/bin/python benchmarks/pointcloud_readers.py [--points 200000 --repeats 3]

Writes one file per variant the project accepts (PCD ascii / binary / binary_compressed; PLY ascii / binary little
and big endian; fields x y z, with rgb, with normals, with a label), reads each with
``anomaly_ov.data.pointcloud.read_pcd`` / ``read_ply`` and with the maintained reader, checks every field is equal,
and prints both times (best of ``--repeats``) and their ratio (project / maintained; above 1 = the project is
slower). plyfile is GPL-3.0, so the project does not depend on it; install it (`pip install plyfile`) to run the
PLY comparison, which is skipped otherwise.

Measured on the 2-core dev machine (50000 points, best of 2): the former pure-Python PCD reader gave the same values
but read binary_compressed files 47-400x slower than pypcd4 (0.9-2.3 s against 2-43 ms) and ascii fields as float64
whatever their declared type, so PCD now goes through pypcd4 (ratios ~1). The PLY reader reads ascii 4-6x faster
than plyfile and binary files equally fast (sub-millisecond either way), with the same values, and is kept.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PCD_VARIANTS = {
    "xyz": [("x", "f4"), ("y", "f4"), ("z", "f4")],
    "xyz+rgb": [("x", "f4"), ("y", "f4"), ("z", "f4"), ("rgb", "f4")],  # PCL packs rgb into a float
    "xyz+normals": [("x", "f4"), ("y", "f4"), ("z", "f4"), ("normal_x", "f4"), ("normal_y", "f4"),
                    ("normal_z", "f4"), ("curvature", "f4")],
    "xyz+label": [("x", "f4"), ("y", "f4"), ("z", "f4"), ("label", "u4")],
}
PLY_VARIANTS = {
    "xyz": [("x", "f4"), ("y", "f4"), ("z", "f4")],
    "xyz+rgb": [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")],
    "xyz+normals": [("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4")],
    "xyz+label": [("x", "f8"), ("y", "f8"), ("z", "f8"), ("label", "i4")],
}
PLY_TYPES = {"f4": "float", "f8": "double", "u1": "uchar", "i4": "int", "u4": "uint"}


def _records(fields: list[tuple[str, str]], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    records = np.zeros(n, dtype=[(name, "<" + kind) for name, kind in fields])
    for name, kind in fields:
        if kind.startswith("f"):
            # a scanner's quantised coordinates (millimetres on a metre-sized object): what binary_compressed
            # files hold, and short enough that ascii prints them exactly
            records[name] = np.round(rng.normal(size=n), 3)
        else:
            records[name] = rng.integers(0, 200, n)
    if "rgb" in records.dtype.names:
        packed = (rng.integers(0, 256, n) << 16 | rng.integers(0, 256, n) << 8 | rng.integers(0, 256, n))
        records["rgb"] = packed.astype("<u4").view("<f4")
    return records


def write_pcd(path: Path, records: np.ndarray, encoding: str) -> None:
    """binary / binary_compressed through pypcd4 (a maintained writer); ascii by hand with 9 significant digits, so
    that a float32 (rgb's packed bits included) survives the text exactly."""
    from pypcd4 import Encoding, PointCloud

    names = list(records.dtype.names)
    if encoding != "ascii":
        types = [records.dtype[name].type for name in names]
        PointCloud.from_points([records[name] for name in names], names, types).save(path, encoding=Encoding(encoding))
        return
    kinds = [records.dtype[n].kind.upper() for n in names]
    header = (f"VERSION 0.7\nFIELDS {' '.join(names)}\nSIZE {' '.join(str(records.dtype[n].itemsize) for n in names)}"
              f"\nTYPE {' '.join(kinds)}\nCOUNT {' '.join('1' for _ in names)}\nWIDTH {len(records)}\nHEIGHT 1\n"
              f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(records)}\nDATA ascii\n")
    columns = [records[n].astype(np.float64 if k == "F" else np.int64) for n, k in zip(names, kinds, strict=True)]
    with path.open("w") as handle:
        handle.write(header)
        np.savetxt(handle, np.column_stack(columns), fmt=["%.9g" if k == "F" else "%d" for k in kinds])


def write_ply(path: Path, records: np.ndarray, fmt: str) -> None:
    names = list(records.dtype.names)
    header = [f"ply\nformat {fmt} 1.0\nelement vertex {len(records)}"]
    header += [f"property {PLY_TYPES[records.dtype[n].str[1:]]} {n}" for n in names]
    head = ("\n".join(header) + "\nend_header\n").encode()
    if fmt == "ascii":
        body = "\n".join(" ".join(f"{v:.17g}" if isinstance(v, float) else str(v) for v in row.tolist())
                         for row in records).encode() + b"\n"
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        body = records.astype(records.dtype.newbyteorder(order)).tobytes()
    path.write_bytes(head + body)


def read_pcd_pypcd4(path: Path) -> dict[str, np.ndarray]:
    from pypcd4 import PointCloud

    cloud = PointCloud.from_path(path)
    return {name: cloud.pc_data[name] for name in cloud.fields}


def read_ply_plyfile(path: Path) -> dict[str, np.ndarray]:
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"].data
    return {name: vertex[name] for name in vertex.dtype.names}


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], expected: np.ndarray) -> str:
    """'ok' when both readers give every field of ``expected`` with its values, read as the field's declared type
    (an ascii F4 field is the float32 nearest to its text)."""
    problems = []
    for name in expected.dtype.names:
        want = expected[name]
        for label, fields in (("project", a), ("maintained", b)):
            if name not in fields:
                problems.append(f"{label} lacks {name}")
                continue
            got = np.asarray(fields[name]).reshape(-1)
            if (got.dtype.kind, got.dtype.itemsize) != (want.dtype.kind, want.dtype.itemsize):
                problems.append(f"{label} {name} is {got.dtype}, declared {want.dtype}")
            got = got.astype(want.dtype)
            if np.ascontiguousarray(got).tobytes() != np.ascontiguousarray(want).tobytes():  # bit-exact (rgb: packed)
                problems.append(f"{label} {name} differs")
    return "ok" if not problems else "; ".join(problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from anomaly_ov.data.pointcloud import read_pcd, read_ply

    try:
        import plyfile  # noqa: F401

        have_plyfile = True
    except ImportError:
        have_plyfile = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for variant, fields in PCD_VARIANTS.items():
            records = _records(fields, args.points, seed=len(rows))
            for encoding in ("ascii", "binary", "binary_compressed"):
                path = root / f"{variant}_{encoding}.pcd"
                write_pcd(path, records, encoding)
                check = same(read_pcd(path), read_pcd_pypcd4(path), records)
                ours = best(lambda p=path: read_pcd(p), args.repeats)
                theirs = best(lambda p=path: read_pcd_pypcd4(p), args.repeats)
                rows.append(("PCD", encoding, variant, check, ours, theirs, "pypcd4"))
        for variant, fields in PLY_VARIANTS.items():
            records = _records(fields, args.points, seed=len(rows))
            for fmt in ("ascii", "binary_little_endian", "binary_big_endian"):
                path = root / f"{variant}_{fmt}.ply"
                write_ply(path, records, fmt)
                if not have_plyfile:
                    rows.append(("PLY", fmt, variant, "plyfile not installed", best(lambda p=path: read_ply(p), 1),
                                 float("nan"), "plyfile"))
                    continue
                check = same(read_ply(path), read_ply_plyfile(path), records)
                ours = best(lambda p=path: read_ply(p), args.repeats)
                theirs = best(lambda p=path: read_ply_plyfile(p), args.repeats)
                rows.append(("PLY", fmt, variant, check, ours, theirs, "plyfile"))
    print(f"{args.points} points per file, best of {args.repeats}; ratio = project / maintained reader")
    print(f"{'format':6} {'encoding':22} {'fields':12} {'project s':>10} {'maint. s':>10} {'ratio':>8}  "
          f"{'reader':8} values")
    for fmt, encoding, variant, check, ours, theirs, reader in rows:
        print(f"{fmt:6} {encoding:22} {variant:12} {ours:10.4f} {theirs:10.4f} {ours / theirs:8.2f}  {reader:8} "
              f"{check}")


if __name__ == "__main__":
    main()
