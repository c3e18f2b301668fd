"""Data of the medical and 3D extensions: generate the synthetic sets, read configured sources, build manifests.

Used by the extension stages (``anomaly_ov.evaluate.extensions``, the evaluated modalities and shapes) and by the
``prepare`` stage (:func:`extension_sources`): when ``extensions.*.join_training`` is set, other modalities and
shapes (``train_modalities``, ``train_shapes``) join training with role ``train``, written to their own folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.choices import PointCloudFormat, values
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import Params

SYNTHETIC_MEDICAL_SOURCE = "synthetic_medical"
SYNTHETIC_3D_SOURCE = "synthetic_3d"


def render_settings(params: Params):
    """Render settings of the 3D extension (views, image size, point budget) from params."""
    from anomaly_ov.data.pointcloud import RenderSettings

    threed = params.extensions.threed
    return RenderSettings(views=threed.views, image_size=threed.image_size,
                          max_points=max(threed.points_per_object, 1000) * 10)


def medical_manifest(params: Params, workspace: Path, role: str | None = None) -> pd.DataFrame:
    """Synthetic medical set (when enabled) + ``extensions.medical.sources``; ``role`` overrides every row's role."""

    from anomaly_ov.data.medical import generate_synthetic_medical
    from anomaly_ov.data.sources import read_source

    medical = params.extensions.medical
    frames = []
    if medical.enabled:
        frames.append(generate_synthetic_medical(
            in_workspace(workspace, medical.out_dir), medical.modalities, medical.image_size,
            medical.normal_per_modality, medical.anomaly_per_modality, seed=params.seed,
            source=SYNTHETIC_MEDICAL_SOURCE, role="eval", workspace=workspace,
        ))
    for source in medical.sources:
        frame = read_source(source, workspace).copy()
        frame["modality"] = "medical"
        frames.append(frame)
    return _combine(frames, role)


def threed_manifest(params: Params, workspace: Path, role: str | None = None) -> pd.DataFrame:
    """Rendered synthetic 3D set (when enabled) + ``extensions.threed.sources``, all with the same camera ring."""
    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.pointcloud import generate_synthetic_3d
    from anomaly_ov.data.sources import reader_for

    threed = params.extensions.threed
    settings = render_settings(params)
    out = in_workspace(workspace, threed.out_dir)
    frames = []
    if threed.enabled:
        generate_synthetic_3d(out / "clouds", threed.shapes, threed.normal_per_shape, threed.anomaly_per_shape,
                              train_per_shape=2, points_per_object=threed.points_per_object, seed=params.seed)
        source = SourceParams(name=SYNTHETIC_3D_SOURCE, format="real3d", path=str(out / "clouds"), role="eval",
                              modality="3d")
        frames.append(reader_for("real3d")(source, workspace, settings=settings, out_dir=out / "renders"))
    for source in threed.sources:
        reader = reader_for(source.format)
        if source.format in values(PointCloudFormat):
            frame = reader(source, workspace, settings=settings, out_dir=out / "renders_sources" / source.name)
        else:  # already rendered views in an image layout
            frame = reader(source, workspace).copy()
            frame["modality"] = "3d"
        frames.append(frame)
    return _combine(frames, role)


def _combine(frames: list[pd.DataFrame], role: str | None) -> pd.DataFrame:
    import pandas as pd

    from anomaly_ov.data.manifest import empty_manifest, normalise

    if not frames:
        return empty_manifest()
    frame = normalise(pd.concat(frames, ignore_index=True))
    if role is not None:
        frame["role"] = role
    return frame


def medical_training_manifest(params: Params, workspace: Path) -> pd.DataFrame:
    """The medical modalities that join training (``train_modalities``, role ``train``), written by ``prepare`` to
    ``train_out_dir``: normal and anomalous phantoms with lesion masks, as BMAD's training data with auxiliary
    anomalies. The evaluated ``modalities`` are never among them (checked by the params)."""
    from anomaly_ov.data.medical import generate_synthetic_medical

    medical = params.extensions.medical
    return generate_synthetic_medical(
        in_workspace(workspace, medical.train_out_dir), medical.train_modalities, medical.image_size,
        medical.train_normal_per_modality, medical.train_anomaly_per_modality, train_normal_per_modality=0,
        seed=params.seed, source=SYNTHETIC_MEDICAL_SOURCE + "_train", role="train", workspace=workspace,
    )


def threed_training_manifest(params: Params, workspace: Path) -> pd.DataFrame:
    """The 3D shapes that join training (``train_shapes``, role ``train``): their multi-view renders (with masks
    from the labelled points), written by ``prepare`` to ``train_out_dir``. The evaluated ``shapes`` never are."""
    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.pointcloud import generate_synthetic_3d
    from anomaly_ov.data.sources import reader_for

    threed = params.extensions.threed
    out = in_workspace(workspace, threed.train_out_dir)
    generate_synthetic_3d(out / "clouds", threed.train_shapes, threed.train_normal_per_shape,
                          threed.train_anomaly_per_shape, train_per_shape=0,
                          points_per_object=threed.points_per_object, seed=params.seed)
    source = SourceParams(name=SYNTHETIC_3D_SOURCE + "_train", format="real3d", path=str(out / "clouds"),
                          role="train", modality="3d")
    frame = reader_for("real3d")(source, workspace, settings=render_settings(params), out_dir=out / "renders")
    return _combine([frame], "train")


def extension_sources(params: Params, workspace: Path) -> list[pd.DataFrame]:
    """Manifests (role ``train``) of the extensions whose ``join_training`` is set; called by ``prepare``.

    Their files go to ``train_out_dir`` (prepare's outputs), never to ``out_dir`` (the extension stage's), so no two
    stages write the same folder. A switched-off extension leaves its ``train_out_dir`` empty: DVC wants every
    declared output to exist.
    """
    import shutil

    workspace = Path(workspace)
    frames = []
    for section, build in ((params.extensions.medical, medical_training_manifest),
                           (params.extensions.threed, threed_training_manifest)):
        if section.join_training:
            frames.append(build(params, workspace))
        else:
            out = in_workspace(workspace, section.train_out_dir)
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True, exist_ok=True)
    return [f for f in frames if len(f)]
