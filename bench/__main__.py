"""Service benchmarks: ``python -m bench soak|e2e`` from the repository root.

Both start the real service as processes (Redis, one worker, the API in
Redis mode) and drive it over HTTP with concurrent clients uploading real
photographs: ``soak`` keeps the bounded queue full for ``--duration`` seconds
and accounts for every job, latency and memory (:func:`bench.soak.run_soak`);
``e2e`` compares images/s through the service with the library on the same
images, and measures the gain of cross-request batching (:func:`bench.e2e.run_e2e`).
Run them on an otherwise idle machine: clients, API, worker and Redis share its CPUs.
``authors`` runs the authors' own code beside ours on the same images (:mod:`bench.authors`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.e2e import run_e2e
from bench.soak import run_soak


# ---------------------------------------------------------------------- CLI
def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["authors"]:  # its own arguments: no service, the library only
        from bench.authors import main as authors_main

        return authors_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    for name in ("soak", "e2e"):
        p = sub.add_parser(name)
        p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
        p.add_argument("--redis-url", default=None, help="use this Redis (default: start a private one)")
        p.add_argument("--model", default="default", help="shipped model name or .safetensors path")
        p.add_argument("--image-size", type=_size, default=(64, 48), help="WxH of the uploads (64x48)")
        p.add_argument("--preset", default="standard", help="search preset (default standard)")
        p.add_argument("--threads", type=int, default=1, help="torch threads of the worker/library")
        p.add_argument("--json", type=Path, default=None, help="write the figures here")
    soak, e2e = sub.choices["soak"], sub.choices["e2e"]
    soak.add_argument("--duration", type=float, default=300.0, help="seconds at saturation (300)")
    soak.add_argument("--max-queue", type=int, default=32, help="the API's queue bound (32)")
    soak.add_argument("--max-batch", type=int, default=64, help="the worker's batch (64)")
    soak.add_argument("--sample-every", type=float, default=2.0, help="RSS sampling period, s")
    e2e.add_argument("--images", type=int, default=64, help="images per run (64)")
    args = parser.parse_args(argv)

    out: dict[str, Any] = {}
    common = {"image_size": args.image_size, "preset": args.preset, "threads": args.threads}
    if args.kind == "soak":
        run_soak(args.duration, args.clients, args.redis_url, args.model, out, max_queue=args.max_queue,
                 max_batch=args.max_batch, sample_every_s=args.sample_every, **common)
    else:
        run_e2e(args.images, args.clients, args.redis_url, args.model, out, **common)
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    summary = {k: v for k, v in out.items() if k != "memory"}
    if "memory" in out:
        summary["memory"] = {k: {m: v[m] for m in v if m != "samples"} for k, v in out["memory"].items()}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
