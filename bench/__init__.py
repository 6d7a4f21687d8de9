"""Benchmarks of the running service and the process harness they share with the
integration tests; not installed (run from the repository root: ``python -m bench``)."""
