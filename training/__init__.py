"""Training: the trainer, its data sets and its outlier terms (torch, no service code).

Used by the command line (`safespot train`, `safespot eval`, ...) and by the
worker's training jobs (:mod:`worker.training_runs`)."""
