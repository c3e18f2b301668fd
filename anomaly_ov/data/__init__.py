"""Data: the source formats, their readers and converters, the manifest, the synthetic generators."""
