"""params.yaml loading: defaults, overrides, and errors that name the key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anomaly_ov.config import (
    ConfigError,
    Params,
    apply_overrides,
    load_params,
    parse_override,
    parse_seed_list,
)

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_repository_params_file_is_valid_and_complete() -> None:
    params = load_params(REPO_PARAMS)
    assert params.model.preset == "tiny"
    # Every top-level section is spelled out in the file, so users see every knob.
    written = yaml.safe_load(REPO_PARAMS.read_text())
    assert set(written) == set(Params().to_dict())


def test_recipe_follows_preset() -> None:
    tiny = load_params(None)
    assert tiny.expert_recipe.mask_loss
    pretrained = load_params(None, ["model.preset=llava-onevision-0.5b"])
    assert pretrained.expert_recipe.lr == pytest.approx(1e-4)
    assert pretrained.expert_recipe.batch_size == 128 and not pretrained.expert_recipe.mask_loss
    assert (tiny.recipe_family, pretrained.recipe_family) == ("tiny", "pretrained")
    assert pretrained.instruct_recipe is pretrained.train.instruct.pretrained
    assert tiny.instruct_recipe is tiny.train.instruct.tiny


def test_override_keeps_sibling_defaults() -> None:
    params = load_params(None, ["train.expert.tiny.lr=0.01", "data.synthetic.eval_categories=[pcb]"])
    assert params.expert_recipe.lr == pytest.approx(0.01)
    assert params.expert_recipe.epochs == load_params(None).expert_recipe.epochs
    assert params.data.synthetic.eval_categories == ["pcb"]


def test_every_invalid_key_is_reported_with_its_path(tmp_path: Path) -> None:
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump({"model": {"preset": "huge"}, "data": {"synthetic": {"image_size": 4}}, "bogus": 1}))
    with pytest.raises(ConfigError) as info:
        load_params(file)
    message = str(info.value)
    assert str(file) in message
    assert "model.preset" in message and "'tiny'" in message and "llava-onevision-7b" in message
    assert "data.synthetic.image_size" in message
    assert "bogus: unknown key" in message


def test_expert_temperature_in_a_training_recipe_says_where_it_moved(tmp_path: Path) -> None:
    """The recipes no longer own the expert's temperature (model.expert does): an old params file that still sets
    it is refused with the new place, alongside every other problem of the file."""
    old = yaml.safe_load(REPO_PARAMS.read_text())  # the repository's file as it was: temperature in each recipe
    old["train"]["expert"]["tiny"]["temperature"] = 10.0
    old["train"]["expert"]["pretrained"]["temperature"] = 100.0
    old["model"]["preset"] = "huge"
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError) as info:
        load_params(file)
    message = str(info.value)
    assert "3 invalid setting(s)" in message
    assert "train.expert.tiny.temperature: this key has moved" in message
    assert "train.expert.pretrained.temperature: this key has moved" in message
    assert message.count("set model.expert.temperature") == 2
    assert "model.preset" in message  # the other problems are still reported
    with pytest.raises(ConfigError, match=r"train\.expert\.tiny\.temperature: this key has moved.*"
                                          r"model\.expert\.temperature"):
        load_params(None, ["train.expert.tiny.temperature=3"])
    assert load_params(None, ["model.expert.temperature=3"]).model.expert.temperature == 3


def test_validate_section_keeps_its_yaml_name() -> None:
    params = load_params(None, ["validate.min_image_side=16"])
    assert params.validation.min_image_side == 16
    assert params.to_dict()["validate"]["min_image_side"] == 16


@pytest.mark.parametrize("bad", ["novalue", "=3", "a.b=[unclosed"])
def test_malformed_override_is_explained(bad: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        parse_override(bad)


def test_a_seed_list_keeps_its_order() -> None:
    assert parse_seed_list(" 3, 0,12 ,") == [3, 0, 12]


@pytest.mark.parametrize(("text", "why"), [
    ("0,one", "whole numbers"), (" , ", "at least one"), ("0,-1", ">= 0"), ("1,2,1", "twice"),
    ("0,1,2,3", "at most 3"),
])
def test_a_bad_seed_list_is_explained(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as err:
        parse_seed_list(text, limit=3)
    assert repr(text) in str(err.value)


def test_override_through_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_section_hash_changes_only_with_its_section() -> None:
    a, b = load_params(None), load_params(None, ["evaluate.threshold=0.4"])
    assert a.section_hash("data") == b.section_hash("data")
    assert a.section_hash("evaluate") != b.section_hash("evaluate")


def test_augment_needs_base_view_only() -> None:
    with pytest.raises(ConfigError, match="augment: true needs base_view_only"):
        load_params(None, ["train.expert.pretrained.augment=true"])
    assert load_params(None, ["train.expert.pretrained.augment=true",
                              "train.expert.pretrained.base_view_only=true"]).train.expert.pretrained.augment


def test_loss_reduction_names_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"train\.instruct\.tiny\.loss_reduction.*'token', 'square' or 'sample'"):
        load_params(None, ["train.instruct.tiny.loss_reduction=mean"])
    params = load_params(None)
    assert params.train.instruct.tiny.loss_reduction == "sample"
    assert params.train.instruct.pretrained.loss_reduction == "token"  # LLaVA's, as the paper trains


def test_params_file_that_is_not_utf8_or_is_a_folder_is_named(tmp_path: Path) -> None:
    latin = tmp_path / "params.yaml"
    latin.write_bytes("validate:\n  report_md: rapport_validé.md\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"params.yaml: not UTF-8 text \(byte b'\\xe9' at offset 36\)"):
        load_params(latin)
    with pytest.raises(ConfigError, match="is a folder, not a params file"):
        load_params(tmp_path)


def test_cli_names_a_bad_params_file_without_a_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from anomaly_ov.cli import app

    (tmp_path / "bad.yaml").write_bytes(b"seed: 1\n# caf\xe9\n")
    for params in (tmp_path / "bad.yaml", tmp_path):
        result = CliRunner().invoke(app, ["params", "--params", str(params)])
        assert result.exit_code == 2 and str(params) in result.output, result.output
        assert isinstance(result.exception, SystemExit)


def test_a_recipe_whose_maps_no_loss_trains_is_refused() -> None:
    from anomaly_ov.errors import ConfigError

    assert not load_params(None).expert_recipe.score_loss_trains_maps  # the tiny recipe's
    assert load_params(None, ["model.preset=llava-onevision-0.5b"]).expert_recipe.score_loss_trains_maps  # release
    with pytest.raises(ConfigError, match="score_loss_trains_maps: false needs the mask loss"):
        load_params(None, ["train.expert.tiny.score_loss_trains_maps=false", "train.expert.tiny.mask_loss=false"])


def test_evaluate_batch_size_is_bounded_with_the_key_named():
    assert load_params(None, ["evaluate.batch_size=256"]).evaluate.batch_size == 256
    with pytest.raises(ConfigError, match=r"evaluate\.batch_size"):
        load_params(None, ["evaluate.batch_size=100000"])
