"""The trainer's tests share the worker tests' one-thread rule (the CPUs are shared)."""

from tests.worker.conftest import _one_thread  # noqa: F401 (an autouse fixture, re-exported)
