"""The promotion gate and rollback against a real MLflow registry (SQLite in tmp), with three logged versions."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from anomaly_ov import registry
from anomaly_ov.config import load_params
from anomaly_ov.tracking import start_tracking

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    mlflow_store(tmp_path)
    params = load_params(None, [
        "registry.model_name=gate-test",
        "registry.margin=0.01",
        "registry.thresholds={zero_shot.image_auroc: 0.7}",
    ])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    uri = start_tracking(params, tmp_path)
    return params, model_dir, MlflowClient(uri)


BENCH = registry.Evidence("m" * 64, "b" * 64, images=100, anomalous=40, normal=60)


def new_version(params, model_dir, client, auroc: float, gate: bool = True, lock: bool = False):
    """Log + register the dummy model and run the gate with the given metric (what run_register does)."""
    with mlflow.start_run():
        info = registry.log_model(model_dir, params.registry.model_name, validate_example=False)
    version = str(info.registered_model_version)
    client.set_model_version_tag(params.registry.model_name, version, "metric.zero_shot.image_auroc", str(auroc))
    if not gate:
        return version, None
    if lock:
        with registry.registry_lock(mlflow.get_tracking_uri(), ".", 60):
            decision = registry.apply_gate(client, params.registry, version, {"zero_shot.image_auroc": auroc}, BENCH)
    else:
        decision = registry.apply_gate(client, params.registry, version, {"zero_shot.image_auroc": auroc}, BENCH)
    return version, decision


def test_gate_promotes_better_refuses_worse_and_rollback_restores(setup, tmp_path):
    params, model_dir, client = setup
    name = params.registry.model_name
    v1, d1 = new_version(params, model_dir, client, 0.80)
    assert d1.verdict == "production"
    v2, d2 = new_version(params, model_dir, client, 0.75)  # worse: staging at most, production untouched
    assert d2.verdict == "staging"
    assert registry.alias_version(client, name, "production") == v1
    assert registry.alias_version(client, name, "staging") == v2
    assert registry.alias_version(client, name, "candidate") == v2
    tags = client.get_model_version(name, v2).tags
    assert tags["gate.verdict"] == "staging" and "does not beat production" in tags["gate.reason"]
    assert tags["gate.production_before"] == v1 and tags["gate.thresholds"] == '{"zero_shot.image_auroc": 0.7}'
    v3, d3 = new_version(params, model_dir, client, 0.65)  # below threshold: stays candidate only
    assert d3.verdict == "candidate"
    assert registry.alias_version(client, name, "staging") == v2
    v4, d4 = new_version(params, model_dir, client, 0.90)  # better by more than the margin: production
    assert d4.verdict == "production"
    assert set(client.get_model_version(name, v4).aliases) == {"candidate", "staging", "production"}
    assert client.get_registered_model(name).tags[registry.PREVIOUS_TAG] == v1

    restored = registry.rollback(params, tmp_path)
    assert restored == {"model_name": name, "production": v1, "rolled_back": v4}
    assert registry.alias_version(client, name, "production") == v1
    with pytest.raises(ValueError, match="no earlier production"):
        registry.rollback(params, tmp_path)

    promoted = registry.promote(params, v2, "production", tmp_path)
    assert promoted["previous"] == v1
    assert client.get_model_version(name, v2).tags["production.how"] == "manual"
    assert registry.rollback(params, tmp_path)["production"] == v1
    with pytest.raises(ValueError, match="no version 99"):
        registry.promote(params, 99, "staging", tmp_path)


def test_cli_promote_rollback_and_models(setup, tmp_path):
    from typer.testing import CliRunner

    from anomaly_ov.cli import app
    from anomaly_ov.config import dump_params

    params, model_dir, client = setup
    dump_params(params, tmp_path / "params.yaml")
    cli = CliRunner()
    ws = ["-w", str(tmp_path)]
    refused = cli.invoke(app, ["model", "rollback", *ws])
    assert refused.exit_code == 3 and "has no production version" in refused.output
    v1, _ = new_version(params, model_dir, client, 0.80)
    v2, _ = new_version(params, model_dir, client, 0.75)
    done = cli.invoke(app, ["model", "promote", "--version", v2, "--to", "production", "--json", *ws])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["previous"] == v1
    assert json.loads(cli.invoke(app, ["model", "rollback", "--json", *ws]).stdout)["production"] == v1
    listing = json.loads(cli.invoke(app, ["model", "list", "--json", *ws]).stdout)
    assert [(v["version"], "production" in v["aliases"]) for v in listing["versions"]] == [(v1, True), (v2, False)]
    bad = cli.invoke(app, ["model", "promote", "--version", v1, "--to", "prod", *ws])
    assert bad.exit_code == 2 and "'prod' is not one of" in bad.output  # typer's check of the alias choices


def test_promoting_a_rejected_version_needs_force_and_a_reason(setup, tmp_path):
    from typer.testing import CliRunner

    from anomaly_ov.cli import app
    from anomaly_ov.config import dump_params

    params, model_dir, client = setup
    name = params.registry.model_name
    dump_params(params, tmp_path / "params.yaml")
    v1, _ = new_version(params, model_dir, client, 0.80)
    v2, d2 = new_version(params, model_dir, client, 0.50)
    assert d2.verdict == "candidate"
    cli, ws = CliRunner(), ["-w", str(tmp_path)]
    refused = cli.invoke(app, ["model", "promote", "--version", v2, "--to", "production", *ws])
    assert refused.exit_code == 2 and "cannot go to production: the gate rejected it" in refused.output
    assert "--force" in refused.output
    no_reason = cli.invoke(app, ["model", "promote", "--version", v2, "--to", "production", "--force", *ws])
    assert no_reason.exit_code == 2
    assert registry.alias_version(client, name, "production") == v1
    done = cli.invoke(app, ["model", "promote", "--version", v2, "--to", "production", "--force", "--json", "--reason",
                            "hotfix for line 3, approved by QA", *ws])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["forced"] is True
    tags = client.get_model_version(name, v2).tags
    assert tags["promoted.production.forced"] == "true"
    assert tags["promoted.production.reason"] == "hotfix for line 3, approved by QA"
    assert tags["production.how"] == "forced"
    assert registry.alias_version(client, name, "production") == v2


def test_rollback_to_a_deleted_version_is_a_clear_error(setup, tmp_path):
    from typer.testing import CliRunner

    from anomaly_ov.cli import app
    from anomaly_ov.config import dump_params

    params, model_dir, client = setup
    name = params.registry.model_name
    dump_params(params, tmp_path / "params.yaml")
    v1, _ = new_version(params, model_dir, client, 0.80)
    v2, d2 = new_version(params, model_dir, client, 0.90)
    assert d2.verdict == "production"
    client.delete_model_version(name, v1)
    result = CliRunner().invoke(app, ["model", "rollback", "-w", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert f"version {v1}, which held production before version {v2}, no longer exists" in result.output
    assert "Traceback" not in result.output
    assert registry.alias_version(client, name, "production") == v2


@pytest.mark.timeout(240)
def test_concurrent_registrations_end_with_the_better_one_in_production(setup, tmp_path, monkeypatch):
    """Two gates at once, each made to wait after deciding until the other has decided too (when it can).

    Without serialisation both are judged against the old production (0.80), the better one (0.90) writes first
    and the worse one (0.85) last, so production ends on 0.85 and the history skips a version. With the registry
    lock the second gate decides only after the first one wrote, so it sees the new production.
    """
    import contextlib
    import threading

    params, model_dir, client = setup
    name = params.registry.model_name
    v1, _ = new_version(params, model_dir, client, 0.80)
    worse, _ = new_version(params, model_dir, client, 0.85, gate=False)
    better, _ = new_version(params, model_dir, client, 0.90, gate=False)
    both_decided, better_done = threading.Barrier(2), threading.Event()
    real_decide = registry.decide

    def decide_then_wait(metrics, *args, **kwargs):
        decision = real_decide(metrics, *args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_decided.wait(timeout=3)  # with the lock the other gate cannot decide meanwhile: wait runs out
        if metrics["zero_shot.image_auroc"] < 0.9:
            better_done.wait(timeout=3)  # the worse one writes last when it can
        return decision

    monkeypatch.setattr(registry, "decide", decide_then_wait)
    uri = mlflow.get_tracking_uri()
    errors: list[BaseException] = []

    def gate(version: str, auroc: float) -> None:
        try:
            registry.gate_version(client, params.registry, uri, tmp_path, version,
                                  {"zero_shot.image_auroc": auroc}, BENCH)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            if auroc >= 0.9:
                better_done.set()

    threads = [threading.Thread(target=gate, args=(worse, 0.85)), threading.Thread(target=gate, args=(better, 0.90))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert registry.alias_version(client, name, "production") == better
    history = registry.production_history(client, name)
    worse_verdict = client.get_model_version(name, worse).tags["gate.verdict"]
    assert history == ([v1, worse, better] if worse_verdict == "production" else [v1, better])
    if worse_verdict != "production":  # decided second, against the new production
        assert client.get_model_version(name, worse).tags["gate.production_before"] == better
