"""The `synthesize` stage: manifest + masks -> instruction data, the VisA-D&R benchmark and their reports.

Outputs (all paths from ``params.instruct``, relative to the workspace, written atomically):

- ``train_json`` (``data/instruct/train.json``): LLaVA records from the role == "train" rows
  (format in :mod:`anomaly_ov.instruct.synthesize`);
- ``bench_dir``/``test_data.json`` and ``bench_dir``/``visa_dr.json`` from the role == "eval" rows
  (schema in :mod:`anomaly_ov.instruct.benchmark`);
- ``red_box_dir`` (when ``red_boxes``): the red-box renderings, replaced as a whole;
- ``report`` (``reports/instruct.json``): counts by question kind, category, label and turns, Yes/No balance,
  distinct-answer ratios, rewriter statistics, benchmark counts and the validation summary;
- ``validation_json`` / ``validation_md``: the instruction-set validation report (same format as the data
  validation). It is written first; on a critical failure the stage raises ``StageFailed`` and leaves the
  previous ``train.json`` in place.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from anomaly_ov.config import Params
from anomaly_ov.errors import StageFailed


def run_synthesize(params: Params, workspace: Path) -> dict[str, Any]:
    """Stage entry point (``anomaly-ov stage synthesize``); ``params.parallel`` shards the work (the outputs do not
    depend on it)."""
    with contextlib.ExitStack() as stack:
        return _synthesize(params, workspace, stack)


def _synthesize(params: Params, workspace: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    from anomaly_ov import tracking
    from anomaly_ov.data.manifest import read_manifest
    from anomaly_ov.instruct.benchmark import build_benchmark
    from anomaly_ov.instruct.llm import disabled_stats, make_rewriter
    from anomaly_ov.instruct.synthesize import summarize_records, synthesize_records, workspace_relative
    from anomaly_ov.instruct.validate import validate_records
    from anomaly_ov.io import atomic_dir, atomic_write_json
    from anomaly_ov.parallel import fanout
    from anomaly_ov.paths import in_workspace
    from anomaly_ov.validate.report import write_report

    workspace = Path(workspace)
    cfg = params.instruct
    started = time.perf_counter()
    frame = read_manifest(in_workspace(workspace, params.data.manifest))
    train = frame[frame["role"] == "train"]
    evaluation = frame[frame["role"] == "eval"]
    if train.empty:
        raise StageFailed("synthesize", f"{params.data.manifest} has no role == 'train' rows; list a training "
                                        "source in data.sources (role: train)")

    rewriter = make_rewriter(cfg.rewriter, cfg.max_answer_chars)
    fan = stack.enter_context(fanout(params.parallel, "synthesize"))
    if cfg.red_boxes:
        final_dir = in_workspace(workspace, cfg.red_box_dir)
        with atomic_dir(final_dir) as tmp:
            records = synthesize_records(train, params, workspace, rewriter=rewriter, red_box_dir=tmp, fan=fan)
            tmp_rel, final_rel = workspace_relative(tmp, workspace), workspace_relative(final_dir, workspace)
            for record in records:
                if record.get("red_box"):
                    record["red_box"] = final_rel + record["red_box"][len(tmp_rel):]
    else:
        records = synthesize_records(train, params, workspace, rewriter=rewriter, fan=fan)
    synth_seconds = time.perf_counter() - started

    report = validate_records(records, cfg, workspace, subject=cfg.train_json)
    write_report(report, in_workspace(workspace, cfg.validation_json), in_workspace(workspace, cfg.validation_md))
    stats = summarize_records(records)
    rewriter_stats = rewriter.stats if rewriter is not None else disabled_stats()
    if not report.ok:
        summary = {"records": len(records), "validation_ok": False, **report.counts()}
        raise StageFailed("synthesize", f"instruction set invalid: {report.failure_summary()}; see "
                                        f"{cfg.validation_md}", summary)

    atomic_write_json(in_workspace(workspace, cfg.train_json), records, indent=None)
    bench = build_benchmark(evaluation, params, workspace, cfg.bench_dir, fan=fan)
    stack.close()  # the cluster (if any) is no longer needed
    seconds = time.perf_counter() - started
    full = {
        "train_json": cfg.train_json,
        "seed": cfg.seed,
        "training_rows": len(train),
        "evaluation_rows": len(evaluation),
        **stats,
        "rewriter": rewriter_stats,
        "red_boxes": sum(bool(r.get("red_box")) for r in records),
        "benchmark": bench,
        "validation": {"ok": report.ok, "report": cfg.validation_json, **report.summary},
        "synthesis_seconds": round(synth_seconds, 3),
        "records_per_s": round(len(records) / synth_seconds, 1) if synth_seconds > 0 else None,
        "seconds": round(seconds, 3),
    }
    atomic_write_json(in_workspace(workspace, cfg.report), full)
    for path in (cfg.report, cfg.validation_md):
        tracking.log_artifact(in_workspace(workspace, path))
    return {
        "records": stats["records"],
        "turns": stats["turns"],
        "by_kind": stats["by_kind"],
        "yes_share": stats["yes_share"],
        "distinct_answer_ratio": stats["distinct_answer_ratio"],
        "multi_image_records": stats["multi_image_records"],
        "bench_detection_images": bench["detection_images"],
        "bench_reasoning_items": bench["reasoning_items"],
        "rewriter_failed": rewriter_stats["failed"],
        "validation_ok": report.ok,
        "warnings": len(report.warnings),
        "train_json": cfg.train_json,
        "report": cfg.report,
    }
