"""Instruction data: mask -> region facts -> conversations (LLaVA JSON), and the VisA-D&R benchmark builder.

Modules (each importable on its own; nothing heavy at import time beyond numpy):

- :mod:`~anomaly_ov.instruct.regions`: region facts from a mask (merged regions, 3 x 3 location, size, shape,
  appearance, count).
- :mod:`~anomaly_ov.instruct.knowledge` + ``knowledge/*.yaml``: what a defect is, causes, impact, prevention.
- :mod:`~anomaly_ov.instruct.answers`: question / answer templates built from facts + knowledge.
- :mod:`~anomaly_ov.instruct.synthesize`: ``collect_subjects``, ``synthesize_records``, ``summarize_records``.
- :mod:`~anomaly_ov.instruct.benchmark`: ``build_benchmark`` (``test_data.json`` + ``visa_dr.json``; schema there).
- :mod:`~anomaly_ov.instruct.validate`: ``validate_records`` (GX suite, shared ValidationReport format).
- :mod:`~anomaly_ov.instruct.llm`: optional OpenAI-compatible rewriter with template fallback.
- :mod:`~anomaly_ov.instruct.visual`: red-box visual prompts.
- :mod:`~anomaly_ov.instruct.run`: the ``synthesize`` stage.
"""
