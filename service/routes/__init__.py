"""One router per resource: jobs (filter), checkpoints, training, health (and metrics)."""
