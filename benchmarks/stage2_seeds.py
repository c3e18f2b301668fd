"""Does stage 2's Yes/No follow the expert whatever its seed? Trains stage 2 several times on one stage-1 expert.

For each recipe variant and seed, the script runs the real ``train_instruct`` stage on the workspace's stage-1 expert
(``models/expert``) and instruction data, with ``train.seed`` set to the seed (it draws stage 2's records and orders
its batches), tracking off, in a scratch workspace that links the workspace's ``data`` and ``models`` and writes
every output (the model, the report, the stage's plots) to a temporary folder, so the workspace and its DVC state
are left as they were. Then it asks
the detection question about every image of the benchmark (``instruct.bench_dir``'s test_data.json: the zero-shot
evaluation categories) and prints, per run: the Yes-minus-No logit per expert word after the text warm-up and at the
end (``anomaly_ov.train.instruct.word_margins``), the answers (Yes / No / neither), the detection macro F1 against
the labels and the agreement with the expert's verdict (score >= ``--threshold``). A run whose LLM ignores the
expert's word answers the same to every image: F1 0 (all "No") or about 0.44 (all "Yes"). The margins at the end are
text-only too, so they say whether the LLM still reads the word without the image, not how it answers with it.
With ``--reasoning`` each run also answers the benchmark's reasoning items as the ``evaluate`` stage does (its
``evaluate.max_reasoning_items``, Sentence-BERT and ROUGE-L) and describes every benchmark image (the probe's
describe prompt), printing how often the description claims a defect when the expert's verdict is "anomalous"
and when it is not (``benchmarks/stage2_detection_probe.py``'s reading); about 40 s more per run.

    .venv/bin/python benchmarks/stage2_seeds.py [--workspace .] [--seeds 0,1,2] [--jobs 1] [--threads 2]
        [--variant NAME=KEY=VALUE[,KEY=VALUE...] ...] [--set KEY=VALUE ...] [--reasoning]

The workspace needs what stage 2 reads: run ``make pipeline`` first (or the stages up to ``train_expert``). About 3
minutes per run on 2 CPU threads; ``--jobs`` runs several at once (each with ``--threads``). ``--variant`` adds a
recipe to compare (the default recipe always runs, named "default"), e.g.
``--variant b32=train.instruct.tiny.text_warmup_batch_size=32``.

Measured on the stage-1 expert of the default pipeline at 04b1342 (seed 0), stage 2 seeds 0-5, one CPU thread per
run, 12 runs at once on a 16-core machine (about 375 s each); "Stage 2's Yes / No across seeds" in
docs/tiny_recipe_experiments.md has the table. Warm-up batches of 16 (the default): the warm-up learned the word in
6 of 6 runs (margins about -1.3 / +0.7 / +2.0), agreement with the expert 0.86-1.00 (mean 0.94), detection F1
0.45-0.57 (mean 0.52; the expert's 0.565). Batches of 32: 5 of 6 (one run -0.05 / -0.02 / 0.00), agreement 0.84-1.00
(mean 0.91), F1 0.51-0.59 (mean 0.55).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name=key=value,key=value' -> (name, [key=value, ...]); a comma splits only before the next ``key=`` (a value
    may be a list: ``thr=model.suspicious_thresholds=[0.25,0.5]``)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or "=" not in rest:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: use NAME=KEY=VALUE[,KEY=VALUE...]")
    return name, [item for item in re.split(r",(?=[\w.]+=)", rest) if item]


def _detection(workspace: Path, params, model, processor, threshold: float) -> dict:
    """Answers to the detection question on the benchmark's images, against the labels and the expert's verdict
    (the ``evaluate`` stage's rule and figures: "Yes" anywhere in the answer, macro = the mean over categories)."""
    import torch

    from anomaly_ov.evaluate.detection import parse_yes_no
    from anomaly_ov.evaluate.metrics import macro_binary
    from anomaly_ov.model.predict import Predictor
    from anomaly_ov.paths import in_workspace
    from anomaly_ov.train.instruct import word_margins

    items = json.loads((in_workspace(workspace, params.instruct.bench_dir) / "test_data.json").read_text())
    paths = [str(workspace / it["file"]) for it in items]
    preds = Predictor(model, processor).predict(paths, generate=True, max_new_tokens=4, threshold=threshold)
    answers = [(p.answer or "").strip() for p in preds]
    yes = [bool(parse_yes_no(a)) for a in answers]
    labels = [bool(it["anomaly"]) for it in items]
    categories = [it["category"] for it in items]
    expert = [p.score >= threshold for p in preds]
    n = len(items)
    return {
        "images": n, "yes": sum(yes), "no": sum(a.lower().startswith("no") for a in answers),
        "macro_f1": round(macro_binary(yes, labels, categories)[0]["f1"] or 0.0, 3),
        "expert_macro_f1": round(macro_binary(expert, labels, categories)[0]["f1"] or 0.0, 3),
        "agreement_with_expert": round(sum(y == e for y, e in zip(yes, expert, strict=True)) / n, 3),
        "word_margins": word_margins(model, processor, torch.device("cpu")),
    }


def _probe():
    """benchmarks/stage2_detection_probe.py, whose reading of a description (``says_defective``) this script shares."""
    import importlib.util

    path = REPO / "benchmarks/stage2_detection_probe.py"
    spec = importlib.util.spec_from_file_location("stage2_detection_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reasoning(workspace: Path, params, model, processor, threshold: float) -> dict:
    """The benchmark's reasoning scores (the ``evaluate`` stage's items, cap and scores) and how the descriptions of
    the benchmark's images follow the expert's verdict."""
    from anomaly_ov.evaluate.reasoning import load_reasoning_items, reasoning_metrics, run_reasoning
    from anomaly_ov.model.predict import Predictor
    from anomaly_ov.paths import in_workspace
    from anomaly_ov.train.instruct import DESCRIBE_PROMPT

    bench = in_workspace(workspace, params.instruct.bench_dir)
    predictor = Predictor(model, processor)
    items = load_reasoning_items(bench / "visa_dr.json", params.evaluate.max_reasoning_items, workspace)
    overall, _ = reasoning_metrics(run_reasoning(predictor, items, params.evaluate, workspace))
    images = json.loads((bench / "test_data.json").read_text())
    described = predictor.predict([str(workspace / it["file"]) for it in images], question=DESCRIBE_PROMPT,
                                  generate=True, max_new_tokens=40, threshold=threshold)
    probe = _probe()
    claims = [(probe.says_defective(p.answer or ""), p.score >= threshold) for p in described]
    return {"sbert_low": overall["low_level"]["sbert"], "rouge_low": overall["low_level"]["rouge_l"],
            "sbert_complex": overall["complex"]["sbert"],
            "claims_when_expert_anomalous": probe.share([c for c, e in claims if e]),
            "claims_when_expert_normal": probe.share([c for c, e in claims if not e])}


def run_one(workspace: Path, name: str, seed: int, overrides: list[str], threads: int, threshold: float,
            reasoning: bool = False) -> dict:
    """Stage 2 with ``train.seed=seed`` and ``overrides`` in a scratch workspace (``data`` and ``models`` linked to
    ``workspace``'s, everything it writes in a temporary folder); then :func:`_detection` (and :func:`_reasoning`)."""
    import torch

    from anomaly_ov.config import load_params
    from anomaly_ov.model.presets import load_pretrained
    from anomaly_ov.stages import implementation

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"stage2_{name}_{seed}_") as tmp:
        out = Path(tmp)
        scratch = out / "workspace"  # the stage also writes its DVC plots under reports/: not the real workspace's
        scratch.mkdir()
        for shared in ("data", "models"):
            (scratch / shared).symlink_to(workspace / shared, target_is_directory=True)
        params = load_params(workspace / "params.yaml", [
            "tracking.enabled=false", f"train.seed={seed}", f"train.instruct.output_dir={out / 'model'}",
            f"train.instruct.report={out / 'train_instruct.json'}", f"train.instruct.checkpoint_dir={out / 'ckpt'}",
            *overrides,
        ])
        implementation("train_instruct")(params, scratch)
        report = json.loads((out / "train_instruct.json").read_text())
        model, processor = load_pretrained(out / "model")
        result = _detection(scratch, params, model, processor, threshold)
        if reasoning:
            result |= _reasoning(scratch, params, model, processor, threshold)
    return {"variant": name, "seed": seed, **result,
            "warmup_word_margins": report.get("text_warmup", {}).get("word_margins"),
            "seconds": round(time.perf_counter() - started, 1)}


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def reasoning_table(results: list[dict]) -> str:
    """The ``--reasoning`` figures of each run, one line per run (a score is "-" when the benchmark has no item of its
    kind, a share "None" when no image fell on that side of the expert's threshold)."""
    lines = [f"{'variant':<12} {'seed':>4}  {'SBERT low':>9}  {'ROUGE-L low':>11}  {'SBERT complex':>13}  "
             "claims a defect: expert anomalous / normal"]
    for r in results:
        lines.append(f"{r['variant']:<12} {r['seed']:>4}  {_score(r['sbert_low']):>9}  {_score(r['rouge_low']):>11}  "
                     f"{_score(r['sbert_complex']):>13}  {r['claims_when_expert_anomalous']!s:>21} / "
                     f"{r['claims_when_expert_normal']!s}")
    return "\n".join(lines)


def _margins(m: dict | None) -> str:
    return " / ".join(f"{v:+.2f}" for v in m.values()) if m else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=REPO)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (default 0,1,2)")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="NAME=KEY=VALUE,...",
                        help="a recipe to compare with the default (repeatable)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="a params override for every run (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    parser.add_argument("--threshold", type=float, default=0.5, help="the expert's verdict threshold (default 0.5)")
    parser.add_argument("--reasoning", action="store_true",
                        help="also score the benchmark's reasoning items and read the descriptions (about 40 s a run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be at least 1")
    workspace = args.workspace.resolve()
    missing = [p for p in ("params.yaml", "models/expert", "data/instruct/train.json") if not (workspace / p).exists()]
    if missing:
        raise SystemExit(f"{workspace} lacks {', '.join(missing)}: run `make pipeline` there first (or the stages up "
                         "to train_expert)")
    from anomaly_ov.config import parse_seed_list
    from anomaly_ov.errors import ConfigError

    try:
        seeds = parse_seed_list(args.seeds)
    except ConfigError as exc:
        parser.error(f"--seeds: {exc}")
    variants = [("default", []), *args.variant]
    runs = [(name, seed, [*args.overrides, *sets]) for name, sets in variants for seed in seeds]
    with ProcessPoolExecutor(max_workers=min(args.jobs, len(runs)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, workspace, name, seed, sets, args.threads, args.threshold, args.reasoning)
                   for name, seed, sets in runs]
        for done in as_completed(futures):  # one line per finished run, so a cut-short sweep still reports
            r = done.result()
            print(f"finished: {r['variant']} seed {r['seed']}: F1 {r['macro_f1']:.3f}, margins "
                  f"{_margins(r['word_margins'])}, {r['seconds']:.0f} s", flush=True)
        results = [f.result() for f in futures]

    print(f"\n{'variant':<12} {'seed':>4}  {'margins after warm-up':>22}  {'margins at the end':>20}  "
          f"{'yes/no/other':>12}  {'F1':>5}  {'expert F1':>9}  {'agreement':>9}  {'s':>5}")
    for r in results:
        other = r["images"] - r["yes"] - r["no"]
        print(f"{r['variant']:<12} {r['seed']:>4}  {_margins(r['warmup_word_margins']):>22}  "
              f"{_margins(r['word_margins']):>20}  {r['yes']:>4}/{r['no']}/{other:<3}  {r['macro_f1']:>5.3f}  "
              f"{r['expert_macro_f1']:>9.3f}  {r['agreement_with_expert']:>9.3f}  {r['seconds']:>5.0f}")
    print("margins: Yes-minus-No logit for 'slightly' / 'moderately' / 'highly' (text only)")
    if args.reasoning:
        print("\n" + reasoning_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
