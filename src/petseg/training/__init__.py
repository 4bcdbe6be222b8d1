"""Training: the Trainer, its loss, checkpoints of a run in progress, multi-process plumbing and reports."""
