"""embzoo as a backend of other frameworks (transformers' Auto classes, …)."""
