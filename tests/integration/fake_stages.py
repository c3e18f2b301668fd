"""A stand-in for `anomaly-ov stage NAME` used by the orchestration tests: tiny, real files, real exit codes.

Copied into a temporary DVC repository; its dvc.yaml (see ``FAKE_DVC_YAML``) has the real stage names and report
paths, so the flows, DVC skipping, artifacts and failure reasons are exercised without training anything.
Like the real command it records its result in reports/stages/NAME.result.json with anomaly_ov.stages' own
functions (same schema, same exit codes). Each run also records the environment it saw (MLflow parent run id,
tracking URI, the `anomaly-ov` on PATH).

Switches (environment): ``FAKE_CRASH_ONCE`` (train_expert SIGKILLs itself on its first run), ``FAKE_SLEEP_STAGE``
(that stage sleeps 60 s), ``FAKE_BAD_INPUT_STAGE`` (that stage fails with an InputError naming two files).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import yaml

FAKE_DVC_YAML = {
    "stages": {
        "sources": {"cmd": "python fake_stages.py sources", "always_changed": True, "params": ["data.sources"],
                    "outs": ["data/sources.fingerprint.json"]},
        "prepare": {"cmd": "python fake_stages.py prepare", "deps": ["fake_stages.py", "data/sources.fingerprint.json"],
                    "params": ["seed", "data"], "outs": ["data/manifest.parquet"]},
        "validate": {"cmd": "python fake_stages.py validate", "deps": ["data/manifest.parquet"],
                     "params": ["validate"], "metrics": [{"reports/validation.json": {"cache": False}}]},
        "synthesize": {"cmd": "python fake_stages.py synthesize", "deps": ["reports/validation.json"],
                       "outs": ["data/instruct"], "metrics": [{"reports/instruct.json": {"cache": False}}]},
        "pretrain_tower": {"cmd": "python fake_stages.py pretrain_tower", "deps": ["data/instruct"],
                           "outs": ["models/tower"], "metrics": [{"reports/pretrain_tower.json": {"cache": False}}]},
        "train_expert": {"cmd": "python fake_stages.py train_expert", "deps": ["data/instruct", "models/tower"],
                         "params": ["train.expert"], "outs": ["models/expert"],
                         "metrics": [{"reports/train_expert.json": {"cache": False}}]},
        "train_instruct": {"cmd": "python fake_stages.py train_instruct", "deps": ["models/expert"],
                           "outs": ["models/anomaly_ov"],
                           "metrics": [{"reports/train_instruct.json": {"cache": False}}]},
        "evaluate": {"cmd": "python fake_stages.py evaluate", "deps": ["models/anomaly_ov"],
                     "metrics": [{"reports/metrics.json": {"cache": False}}]},
        "extend_medical": {"cmd": "python fake_stages.py extend_medical", "deps": ["models/anomaly_ov"],
                           "metrics": [{"reports/extensions/medical.json": {"cache": False}}]},
        "extend_3d": {"cmd": "python fake_stages.py extend_3d", "deps": ["models/anomaly_ov"],
                      "metrics": [{"reports/extensions/3d.json": {"cache": False}}]},
        "register": {"cmd": "python fake_stages.py register", "deps": ["models/anomaly_ov", "reports/metrics.json"],
                     "metrics": [{"reports/register.json": {"cache": False}}]},
    }
}


def _write(path: str, obj) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(obj, indent=2))


def main(stage: str) -> int:
    import time

    from anomaly_ov.errors import AnomalyOVError
    from anomaly_ov.stages import finish_record, new_record, write_result

    started = time.perf_counter()
    record = new_record(stage)
    write_result(".", stage, record)
    try:
        summary = work(stage)
    except AnomalyOVError as exc:
        write_result(".", stage, finish_record(record, time.perf_counter() - started, error=exc))
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    write_result(".", stage, finish_record(record, time.perf_counter() - started, summary))
    print(json.dumps(summary, indent=2))
    return 0


def work(stage: str) -> dict:
    from anomaly_ov.errors import InputError, StageFailed

    params = yaml.safe_load(Path("params.yaml").read_text()) or {}
    Path("reports/env").mkdir(parents=True, exist_ok=True)
    _write(f"reports/env/{stage}.json", {
        "parent_run_id": os.environ.get("ANOMALY_OV_MLFLOW_PARENT_RUN_ID"),
        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        "anomaly_ov_on_path": shutil.which("anomaly-ov"),
    })
    with open(f"reports/env/{stage}.attempts", "a") as fh:
        fh.write("1\n")
    if os.environ.get("FAKE_SLEEP_STAGE") == stage:
        import time

        time.sleep(60)
    print(f"fake {stage}: working")
    if os.environ.get("FAKE_BAD_INPUT_STAGE") == stage:
        raise InputError("2 unusable file(s): fix or remove them", failing=["ds/widget/a.png: not an image",
                                                                          "ds/widget/b.png: truncated"])
    if stage == "sources":
        _write("data/sources.fingerprint.json", {"sources": {}})
    elif stage == "prepare":
        import pandas as pd

        Path("data").mkdir(exist_ok=True)
        n = int(params.get("data", {}).get("synthetic", {}).get("train_normal_per_category", 4))
        pd.DataFrame({"source": ["s"] * n, "split": ["train"] * n, "label": [0] * n}).to_parquet(
            "data/manifest.parquet")
    elif stage == "validate":
        need = int(params.get("validate", {}).get("min_images_per_category", 2))
        ok = need <= 1000
        check = {"name": "images_per_category", "severity": "critical", "passed": ok, "n_failing": 0 if ok else 1,
                 "message": "ok" if ok else f"category s has fewer than {need} images", "failing": []}
        _write("reports/validation.json", {"ok": ok, "summary": {"checks": 1, "failed": int(not ok)},
                                           "checks": [check]})
        if not ok:
            raise StageFailed("validate", f"1 critical check(s) failed: images_per_category ({check['message']})",
                              failing=["images_per_category: category s"])
    elif stage == "synthesize":
        _write("data/instruct/train.json", [{"id": 1}])
        _write("reports/instruct.json", {"records": 1, "yes_share": 0.5})
    elif stage == "pretrain_tower":
        _write("models/tower/tower.json", {"trained": False})
        _write("reports/pretrain_tower.json", {"trained": False})
    elif stage == "train_expert":
        if os.environ.get("FAKE_CRASH_ONCE") and not Path("crashed.flag").exists():
            Path("crashed.flag").write_text("1")
            print("simulated crash", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no result recorded: the record still says "running"
        _write("models/expert/weights.json", {"w": 1})
        _write("reports/train_expert.json", {"history": [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.5}]})
    elif stage == "train_instruct":
        _write("models/anomaly_ov/config.json", {"preset": "fake"})
        _write("reports/train_instruct.json", {"history": [{"step": 1, "loss": 2.0}], "final_loss": 2.0})
    elif stage == "evaluate":
        _write("reports/metrics.json", {"zero_shot": {"image_auroc": 0.8}, "detection": {"macro_f1": 0.6}})
    elif stage in ("extend_medical", "extend_3d"):
        name = "medical" if stage == "extend_medical" else "3d"
        _write(f"reports/extensions/{name}.json", {"image_auroc": 0.7})
    elif stage == "register":
        _write("reports/register.json", {"model_name": "fake", "version": None, "reason": "fake stages"})
    return {"stage": stage, "ok": True}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
