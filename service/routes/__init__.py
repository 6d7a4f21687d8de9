"""One router per resource: jobs (filter), checkpoints, training, health, metrics."""
