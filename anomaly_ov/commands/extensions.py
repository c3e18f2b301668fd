"""`anomaly-ov convert-medical` and `anomaly-ov render-3d`: bring scanner files and point clouds into the pipeline.

``convert-medical`` turns DICOM files (windowed: CT preset, explicit centre/width or the file's VOI window) or
NIfTI volumes (sliced along an axis, label volumes sliced alike) into 8-bit RGB PNGs in the BMAD layout plus
``manifest.parquet``; point a ``bmad`` source at the output folder. ``render-3d`` renders a point-cloud dataset
(Real3D-AD, Anomaly-ShapeNet, MVTec 3D-AD layout) into multi-view images + masks with the camera ring of the
3D extension and prints where the views went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anomaly_ov.cli import _fail, app


@app.command("convert-medical")
def convert_medical(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM files / folders of .dcm, or NIfTI volumes")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (BMAD layout + manifest.parquet)")],
    category: Annotated[str, typer.Option("--category", "-c", help="category name, e.g. brain_ct")],
    masks: Annotated[Path | None, typer.Option(help="folder of masks: same file name (NIfTI) or stem .png (DICOM)")
                     ] = None,
    window: Annotated[str, typer.Option(help="brain | lung | abdomen | liver | bone | ... | auto | minmax | "
                                             "percentile | CENTER,WIDTH")] = "auto",
    axis: Annotated[int, typer.Option(help="NIfTI slicing axis (0, 1 or 2)")] = 2,
    step: Annotated[int, typer.Option(help="NIfTI: keep every n-th slice")] = 1,
    split: Annotated[str, typer.Option(help="train | valid | test")] = "test",
    size: Annotated[int | None, typer.Option(help="resize slices to SIZE x SIZE")] = None,
    source: Annotated[str, typer.Option(help="source name written to the manifest")] = "medical",
    workspace: Annotated[Path, typer.Option("--workspace", "-w")] = Path("."),
) -> None:
    """Convert DICOM / NIfTI to BMAD-layout PNG slices with masks and a manifest."""
    from anomaly_ov.data.medical import MedicalFormatError, convert_dicom, convert_nifti

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in (".dcm", ".dicom", "")
                                and p.is_file()))
        elif item.exists():
            files.append(item)
        else:
            _fail(f"{item}: not found")
    parsed: str | tuple[float, float] = window
    if "," in window:
        try:
            centre, width = (float(v) for v in window.split(","))
        except ValueError:
            _fail(f"--window {window!r}: expected CENTER,WIDTH numbers (e.g. 40,400) or a preset name", 2)
        parsed = (centre, width)
    nifti = [f for f in files if f.name.lower().endswith((".nii", ".nii.gz"))]
    try:
        if nifti:
            if len(nifti) != len(files):
                _fail("mix of NIfTI and other files: convert them in separate calls", 2)
            pairs = [(f, (masks / f.name) if masks and (masks / f.name).exists() else None) for f in nifti]
            frame = convert_nifti(pairs, out, category, split, axis, parsed if window != "auto" else "percentile",
                                  step, size, source, workspace=workspace)
        else:
            mask_map = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png"} if masks else None
            frame = convert_dicom(files, out, category, split, parsed, mask_map, size, source, workspace=workspace)
    except (MedicalFormatError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    anomalous = int((frame["label"] == "anomaly").sum())
    typer.echo(f"{len(frame)} images ({anomalous} with lesion masks) written to {out}; manifest {out}/manifest.parquet")


@app.command("render-3d")
def render_3d(
    path: Annotated[Path, typer.Argument(help="dataset root")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="real3d | shapenet | mvtec3d")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the rendered views")],
    views: Annotated[int, typer.Option(help="views per object (camera ring)")] = 4,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    role: Annotated[str, typer.Option(help="train | eval")] = "eval",
    workspace: Annotated[Path, typer.Option("--workspace", "-w")] = Path("."),
) -> None:
    """Render a point-cloud dataset into multi-view images + masks (manifest.parquet beside them)."""
    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.pointcloud import PointCloudError, RenderSettings
    from anomaly_ov.data.sources import LayoutError, reader_for

    if fmt not in ("real3d", "shapenet", "mvtec3d"):
        _fail(f"--format {fmt!r}: choose real3d, shapenet or mvtec3d", 2)
    source = SourceParams(name=path.name, format=fmt, path=str(path.resolve()), role=role, modality="3d")
    try:
        frame = reader_for(fmt)(source, workspace, settings=RenderSettings(views=views, image_size=size),
                                out_dir=out.resolve())
    except (LayoutError, PointCloudError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"{frame['group'].nunique()} objects, {len(frame)} views written to {out}")
