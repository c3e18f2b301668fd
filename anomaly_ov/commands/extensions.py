"""`anomaly-ov data convert-medical` and `anomaly-ov data render-3d`: scanner files and point clouds for the pipeline.

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

from anomaly_ov.choices import PointCloudFormat, Role, Split, choices
from anomaly_ov.cli import data_app
from anomaly_ov.errors import ConfigError

SplitChoice = choices("SplitChoice", Split)
RoleChoice = choices("RoleChoice", Role)
PointCloudChoice = choices("PointCloudChoice", PointCloudFormat)


@data_app.command("convert-medical")
def convert_medical(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM files / folders of .dcm, or NIfTI volumes")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (BMAD layout + manifest.parquet)")],
    category: Annotated[str, typer.Option("--category", "-c", help="category name, e.g. brain_ct")],
    masks: Annotated[Path | None, typer.Option(help="folder of masks: same file name (NIfTI) or stem .png (DICOM)")
                     ] = None,
    window: Annotated[str, typer.Option(help="brain | lung | abdomen | liver | bone | ... | auto | minmax | "
                                             "percentile | CENTER,WIDTH")] = "auto",
    axis: Annotated[int, typer.Option(min=0, max=2, help="NIfTI slicing axis")] = 2,
    step: Annotated[int, typer.Option(min=1, help="NIfTI: keep every n-th slice")] = 1,
    split: Annotated[SplitChoice, typer.Option(help="split the slices go to")  # type: ignore[valid-type]
                     ] = SplitChoice("test"),
    size: Annotated[int | None, typer.Option(help="resize slices to SIZE x SIZE")] = None,
    source: Annotated[str, typer.Option(help="source name written to the manifest")] = "medical",
    workspace: Annotated[Path, typer.Option("--workspace", "-w")] = Path("."),
) -> None:
    """Convert DICOM / NIfTI to BMAD-layout PNG slices with masks and a manifest."""
    from anomaly_ov.data.medical import convert_dicom, convert_nifti
    from anomaly_ov.io import MissingFile

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in (".dcm", ".dicom", "")
                                and p.is_file()))
        elif item.exists():
            files.append(item)
        else:
            raise MissingFile(f"{item}: not found (give DICOM files, folders of .dcm files or NIfTI volumes)")
    parsed = _window(window)
    nifti = [f for f in files if f.name.lower().endswith((".nii", ".nii.gz"))]
    if nifti:
        if len(nifti) != len(files):
            raise ConfigError("mix of NIfTI and other files: convert them in separate calls")
        pairs = [(f, (masks / f.name) if masks and (masks / f.name).exists() else None) for f in nifti]
        frame = convert_nifti(pairs, out, category, str(split), axis, parsed if window != "auto" else "percentile",
                              step, size, source, workspace=workspace)
    else:
        mask_map = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png"} if masks else None
        frame = convert_dicom(files, out, category, str(split), parsed, mask_map, size, source, workspace=workspace)
    anomalous = int((frame["label"] == "anomaly").sum())
    typer.echo(f"{len(frame)} images ({anomalous} with lesion masks) written to {out}; manifest {out}/manifest.parquet")


def _window(window: str) -> str | tuple[float, float]:
    """``--window`` as the converters take it (a name or a (centre, width) pair), checked before any file is read."""
    from anomaly_ov.data.medical import resolve_window

    parsed: str | tuple[float, float] = window
    if "," in window:
        try:
            centre, width = (float(v) for v in window.split(","))
        except ValueError:
            raise ConfigError(f"--window {window!r}: expected CENTER,WIDTH numbers (e.g. 40,400) or a preset name"
                              ) from None
        parsed = (centre, width)
    if parsed not in ("auto", "minmax", "percentile"):  # those are resolved per file, from its pixel values
        try:
            resolve_window(parsed)
        except ValueError as exc:
            raise ConfigError(f"--window {window!r}: {exc}") from None
    return parsed


@data_app.command("render-3d")
def render_3d(
    path: Annotated[Path, typer.Argument(help="dataset root")],
    fmt: Annotated[PointCloudChoice,  # type: ignore[valid-type]
                   typer.Option("--format", "-f", help="point-cloud layout")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the rendered views")],
    views: Annotated[int, typer.Option(help="views per object (camera ring)")] = 4,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    role: Annotated[RoleChoice, typer.Option(help="what the rendered views may be used for")  # type: ignore[valid-type]
                    ] = RoleChoice("eval"),
    workspace: Annotated[Path, typer.Option("--workspace", "-w")] = Path("."),
) -> None:
    """Render a point-cloud dataset into multi-view images + masks (manifest.parquet beside them)."""
    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.pointcloud import RenderSettings
    from anomaly_ov.data.sources import reader_for

    source = SourceParams.model_validate({"name": path.name, "format": str(fmt), "path": str(path.resolve()),
                                          "role": str(role), "modality": "3d"})
    frame = reader_for(str(fmt))(source, workspace, settings=RenderSettings(views=views, image_size=size),
                                  out_dir=out.resolve())
    typer.echo(f"{frame['group'].nunique()} objects, {len(frame)} views written to {out}")
