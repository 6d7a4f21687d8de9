"""Job backends of the API (implementations of `worker.protocol.JobBackend`).

`redis_backend.RedisJobBackend` serves deployments; the embedded,
in-process backend of the single-command mode lives in `worker.embedded`
because it runs the search (torch), which this package never imports.
"""
