"""Training, data and evaluation code for drwkv models (run as python -m training.train / training.eval)."""
