"""Anomaly-OV model: LTFM expert, LLaVA-OneVision wrapper, processor, presets, inference.

Import from the submodules (kept lazy so the CLI starts fast; all of them import torch/transformers):

* ``anomaly_ov.model.expert``: ``AnomalyExpert(hidden_size, embed_dim, grid_size, num_levels, temperature, eps)``,
  ``ExpertOutput`` (maps [N,1,G,G], crop_tokens [N,4,C], global_tokens [B,1,C], scores / score_logits [B,1],
  base_index, base_maps), ``load_expert_weights(expert, path_or_state, strict=False)``.
* ``anomaly_ov.model.modeling``: ``AnomalyOVConfig``, ``AnomalyOVForConditionalGeneration`` (``forward`` /
  ``generate`` like LLaVA-OV, ``expert_forward(pixel_values, image_sizes)``, ``set_trainable(...)``).
* ``anomaly_ov.model.processing``: ``AnomalyOVProcessor`` (``processor(images, conversation)``,
  ``decode_answers``, ``preprocess_images``), ``load_image_processor(dir)``, ``ImagePreprocessor`` +
  ``collate_crops`` (stage-1 DataLoader).
* ``anomaly_ov.model.tokenizer``: ``train_tokenizer(texts, vocab_size)`` (tiny preset).
* ``anomaly_ov.model.presets``: ``build_model(params, tokenizer)``, ``build_processor(params, tokenizer)``,
  ``image_processor_for(params)`` (the one image processor of a preset: a pretrained preset's comes from its
  checkpoint), ``processor_for(model, tokenizer, image_processor)``, ``save_pretrained`` / ``load_pretrained``,
  ``save_expert_stage`` / ``load_expert_stage``, ``build_shapes_only(preset)``.
* ``anomaly_ov.model.predict``: ``Predictor.from_pretrained(path_or_model, device, processor)``,
  ``.predict(images, question, generate, threshold, max_new_tokens, batch_size) -> list[Prediction]``, ``.chat``.
"""
