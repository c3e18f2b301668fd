"""Evaluation: metrics, the VisA-D&R detection and reasoning protocols, figures and reports.

- ``metrics``: image / pixel AUROC, F1-max, AUPRO (exact and memory-bounded binned), Yes/No macro metrics.
- ``detection``: the detection prompt over ``test_data.json``; expert scores and maps; per-class metrics.
- ``reasoning``: multi-turn answers over ``visa_dr.json``; ROUGE-L, Sentence-BERT, optional LLM ``judge``.
- ``figures``: sample TP/FP/FN overlays, ROC / PRO curves, confusion matrices (matplotlib, Agg, lazy).
- ``report``: flat ``metrics.json``, ``predictions.parquet``, curve CSVs, ``evaluation.md``.
- ``run``: the ``evaluate`` stage and :func:`~anomaly_ov.evaluate.run.evaluate_dataset` (reused by the CLI and
  the medical / 3D extensions).
"""
