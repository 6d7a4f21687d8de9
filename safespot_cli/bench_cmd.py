"""`safespot bench`: performance benchmarks (a measurement, not a test).

Sections (``--sections``, comma-separated):
- ``limit``: forward+backward passes per second of the model alone (inputs
  requiring grad, as in the search) at several batch sizes; the best is the
  limit every other figure is compared with.
- ``search``: continuous-batching search throughput (images/s) and its
  efficiency = passes actually spent per second / the limit, per batch size.
- ``presets``: passes per image and safe-spot rate of each preset on fixed
  test images (the cost/quality curve of early exit against ``paper``).
- ``memory``: peak resident memory (CPU) or peak allocated memory (GPU) of a
  search per batch size.
- ``service``: the service end to end: ``python -m bench e2e`` in a child
  process (the repository's ``bench/``, not installed with the package).
- ``train``: the trainer's step per recipe, precision and memory layout
  (see :mod:`safespot_cli.bench_train`); not in the default sections.

All ratios come from one run on one machine, because a shared machine's
absolute speed drifts.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safespot_cli.common import add_model_args, open_device, write_json
from safespot_cli.errors import UsageError
from worker.protocol import NORMS, PRESETS

HELP = """Measure the search's speed against the model's own forward+backward limit,
against batch size 1, and the presets' cost and safe-spot rate against `paper`.

examples:
  safespot bench --model cifar10 --json bench.json
  safespot bench --sections limit,search --batch-sizes 1,8,32,128 --json quick.json
  safespot bench --arch wrn-34-10 --device cuda --sections limit,search --json gpu.json
  safespot bench --arch cifar-cnn --sections limit,train --batch-sizes 128 --json train.json"""

SECTIONS = ("limit", "search", "presets", "memory", "service", "train")


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="performance benchmarks (JSON)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--arch", default=None, help="benchmark a randomly initialised architecture instead, "
                                               "e.g. wrn-34-10 (speed only)")
    p.add_argument("--sections", default="limit,search,presets,memory")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256")
    p.add_argument("--preset-n", type=int, default=200, help="test images for the presets section")
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--norm", default="linf", choices=NORMS)
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seconds", type=float, default=20.0, help="time budget per batch size (search)")
    p.add_argument("--precisions", default="fp32",
                   help="search section: fp32 and/or bf16 (autocast), e.g. fp32,bf16")
    p.add_argument("--service-images", type=int, default=128, help="uploads for the service section")
    p.add_argument("--service-clients", type=int, default=8)
    p.add_argument("--train-recipes", default="adv-fast,s-fgsm-adv-pgd5", help="train section's recipes")
    p.add_argument("--train-batch", type=int, default=128, help="train section's batch size")
    p.add_argument("--redis-url", default=None, help="service section: an existing Redis (default: start one)")
    p.add_argument("--json", dest="json_out", required=True, metavar="OUT")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from safespot_cli.bench_search import (
        measure_limit,
        measure_memory,
        measure_presets,
        measure_search,
        open_bench_model,
    )

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise UsageError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if "train" in sections:  # before any measuring: a typo should not cost the first sections' minutes
        from safespot_cli.bench_train import TRAIN_RECIPES

        bad = sorted(set(args.train_recipes.split(",")) - set(TRAIN_RECIPES))
        if bad:
            raise UsageError(f"unknown --train-recipes {bad}; choose from {sorted(TRAIN_RECIPES)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        raise UsageError("--precisions takes fp32 and/or bf16")
    device = open_device(args)
    model, model_meta, input_size = open_bench_model(args, device)
    out: dict[str, Any] = {"device": describe_device(device), "model": model_meta,
                           "torch": torch.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def save() -> None:
        write_json(args.json_out, out)

    if "limit" in sections or "search" in sections:
        out["limit"] = measure_limit(model, input_size, device, [b for b in batch_sizes if b >= 8] or batch_sizes)
        out["limit_passes_per_s"] = out["limit"]["best_passes_per_s"]
        if "bf16" in precisions:
            out["limit_bf16"] = measure_limit(model, input_size, device,
                                              [b for b in batch_sizes if b >= 8] or batch_sizes, precision="bf16")
        save()
    if "search" in sections:
        out["search"] = measure_search(model, input_size, device, batch_sizes, out["limit_passes_per_s"],
                                       args.seconds, args.norm, args.data, args.data_dir, precisions)
        save()
    if "memory" in sections:
        out["memory"] = measure_memory(model, input_size, device, batch_sizes, args.norm)
        save()
    if "presets" in sections:
        out["presets"] = measure_presets(model, device, args.presets.split(","), args.preset_n, args.norm,
                                         args.data, args.data_dir)
        save()
    if "service" in sections:
        out["service"] = run_service_bench(args)
        save()
    if "train" in sections:
        from models.normalize import Classifier
        from safespot_cli.bench_search import fixed_test_images
        from safespot_cli.bench_train import measure_training

        assert isinstance(model, Classifier)  # checkpoints and --arch both build one
        x, y = fixed_test_images(args.train_batch, args.data, args.data_dir, device, input_size)
        out["train"] = measure_training(model, x, y, args.train_recipes.split(","),
                                        limit=out.get("limit_passes_per_s"))
        save()
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    save()
    print(summary(out))
    return 0


def run_service_bench(args: argparse.Namespace) -> dict[str, Any]:
    """`python -m bench e2e` from the source tree this package lives in; its JSON figures."""
    import json
    import subprocess
    import sys
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    if not (repo / "bench" / "__main__.py").is_file():
        raise UsageError("the service section runs bench/ from a source checkout; none is next to "
                         f"this installation ({repo})")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "e2e.json"
        model = str(Path(args.model).resolve()) if args.model.endswith(".safetensors") else args.model
        command = [sys.executable, "-m", "bench", "e2e", "--images", str(args.service_images),
                   "--clients", str(args.service_clients), "--model", model,
                   "--threads", str(args.threads or 2), "--json", str(report)]
        subprocess.run(command + (["--redis-url", args.redis_url] if args.redis_url else []),
                       cwd=repo, check=True)
        return dict(json.loads(report.read_text()))


def describe_device(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads of {os.cpu_count()} cores"


def summary(out: dict[str, Any]) -> str:
    lines = [f"device {out['device']}, model {out['model'].get('name')}"]
    if "limit_passes_per_s" in out:
        lines.append(f"limit: {out['limit_passes_per_s']:.0f} passes/s")
    for row in out.get("search", []):
        lines.append(f"search batch {row['batch']:>4} {row.get('precision', 'fp32')}: "
                     f"{row['images_per_s']:8.2f} images/s, efficiency {row['efficiency']:.3f}"
                     + (f", x{row['vs_fp32']:.2f} of fp32" if "vs_fp32" in row else ""))
    for name, p in out.get("presets", {}).items():
        if not isinstance(p, dict):
            lines.append(f"presets: {p}")
            continue
        lines.append(f"preset {name:>8}: safe-spot rate {p['safe_spot_rate']:.4f}, "
                     f"{p['grad_evals_per_image']:.1f} passes/image")
    for row in out.get("train", {}).get("rows", []):
        layout = "channels-last" if row["channels_last"] else "NCHW"
        lines.append(f"train {row['recipe']:>16} {row['precision']} {layout:>13}: "
                     f"{row['images_per_s']:8.1f} images/s, x{row['vs_default']:.2f} of fp32 channels-last")
    if "service" in out:
        s = out["service"]
        lines.append(f"service: e2e/library {s.get('e2e_vs_library')}, batching gain {s.get('batching_gain')}")
    return "\n".join(lines)


def rss_mib(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MiB (VmRSS from /proc); None where there is none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class RssSampler:
    """The RSS (MiB) of the processes `pids()` names, every `every_s` seconds, in a thread."""

    def __init__(self, pids: Callable[[], dict[str, int | str]], every_s: float) -> None:
        self.pids, self.every_s, self.t0 = pids, every_s, time.monotonic()
        self.series: dict[str, list[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            clock = round(time.monotonic() - self.t0, 2)
            for name, pid in self.pids().items():
                value = rss_mib(pid)
                if value is not None:
                    self.series.setdefault(name, []).append((clock, round(value, 2)))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class PeakMemory:
    """Peak resident set size (CPU, sampled every 10 ms) or CUDA's peak allocation, in bytes."""

    def __init__(self, device: Any) -> None:
        self.device, self.peak = device, 0
        self._rss = RssSampler(lambda: {"self": "self"}, 0.01)

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._rss.__exit__()
            self.peak = int(max((v for _, v in self._rss.series.get("self", [])), default=0) * 2**20)
