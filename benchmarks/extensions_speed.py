"""Speed of the extension data paths: synthetic medical slices, point-cloud normals + multi-view rendering.

    .venv/bin/python benchmarks/extensions_speed.py [--points 20000] [--views 4] [--size 128]

Prints slices/s for the phantom generator and objects/s (and views/s) for the renderer; no assertions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--slices", type=int, default=24)
    args = parser.parse_args()

    from anomaly_ov.data.medical import generate_synthetic_medical
    from anomaly_ov.data.pointcloud import normals_pca, render_views, synthetic_object

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        frame = generate_synthetic_medical(Path(tmp) / "med", ("brain_mri", "liver_ct"), args.size,
                                           args.slices // 6, args.slices // 6, workspace=tmp)
        seconds = time.perf_counter() - started
        print(f"medical phantoms: {len(frame)} slices at {args.size}px in {seconds:.2f} s "
              f"({len(frame) / seconds:.1f} slices/s, PNG writes included)")

    clouds = [synthetic_object(("cylinder", "box", "bowl")[i % 3], args.points, i, "dent") for i in range(args.objects)]
    started = time.perf_counter()
    for cloud in clouds:
        normals_pca(cloud.points)
    normal_s = time.perf_counter() - started
    started = time.perf_counter()
    for cloud in clouds:
        render_views(cloud, args.views, args.size)
    total_s = time.perf_counter() - started
    print(f"PCA normals: {args.objects * args.points / normal_s:,.0f} points/s ({args.points} points per object)")
    print(f"render (normals + {args.views} views at {args.size}px): {args.objects / total_s:.2f} objects/s, "
          f"{args.objects * args.views / total_s:.1f} views/s")


if __name__ == "__main__":
    main()
