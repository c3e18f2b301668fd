"""instruct."""
