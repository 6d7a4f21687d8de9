"""The library measurements behind `safespot bench` (limit, search, memory, presets)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from safespot import SafeSpotSearch, SearchConfig
from safespot.losses import evaluate


def open_bench_model(args: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any], tuple[int, ...]]:
    """The model to measure: a checkpoint, or a random architecture (speed only)."""
    if args.arch:
        from models.architectures import native_input
        from models.checkpoint import ModelInfo, build_model
        from models.normalize import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

        arch, kwargs = {"wrn-34-10": ("wide_resnet", {"depth": 34, "widen_factor": 10}),
                        "preact-resnet-18": ("preact_resnet18", {}),
                        "cifar-cnn": ("cifar_cnn", {})}.get(args.arch, (args.arch, {}))
        size = native_input(arch)  # ResNet-50 and library architectures: ImageNet's 224
        imagenet = size[-1] >= 128
        info = ModelInfo(arch=arch, arch_args=kwargs, num_classes=1000 if imagenet else 10, input_size=size,
                         class_names=[], mean=list(IMAGENET_MEAN if imagenet else CIFAR10_MEAN),
                         std=list(IMAGENET_STD if imagenet else CIFAR10_STD))
        model = build_model(info).to(device).eval()
        params = sum(p.numel() for p in model.parameters())
        return model, {"name": args.arch, "arch": arch, "random_weights": True, "parameters": params,
                       "input_size": list(size), "num_classes": info.num_classes}, info.input_size
    from models import load_checkpoint

    loaded = load_checkpoint(args.model, device)
    params = sum(p.numel() for p in loaded.model.parameters())
    return loaded.model, {"name": args.model, "sha256": loaded.sha256, "arch": loaded.info.arch,
                          "parameters": params}, loaded.info.input_size


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_s(call: Callable[[], object], device: torch.device, seconds: float, at_least: int = 2) -> float:
    """How often `call` runs per second over `seconds` (and `at_least` calls), its device work included."""
    sync_device(device)  # work queued before is not ours
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < at_least:
        call()
        n += 1
    sync_device(device)
    return n / (time.perf_counter() - start)


def measure_limit(model: nn.Module, input_size: tuple[int, ...], device: torch.device,
                  batch_sizes: list[int], seconds: float = 4.0, precision: str = "fp32") -> dict[str, Any]:
    """Forward+backward passes per second (input gradient only), per batch size, in the
    search's float32 or under its bf16 autocast."""
    rows = []
    for b in batch_sizes:
        x = torch.rand(b, *input_size, device=device)
        y = torch.randint(0, 10, (b,), device=device)

        def one_pass(x: torch.Tensor = x, y: torch.Tensor = y) -> object:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return evaluate(model, x, y)

        one_pass()  # warm-up (allocator, kernels)
        rate = calls_per_s(one_pass, device, seconds, at_least=3)
        rows.append({"batch": b, "passes_per_s": round(rate * b, 1)})
    best = max(rows, key=lambda r: r["passes_per_s"])
    return {"per_batch": rows, "best_batch": best["batch"], "best_passes_per_s": best["passes_per_s"]}


def fixed_test_images(n: int, data: str, data_dir: str | None, device: torch.device,
                      input_size: tuple[int, ...], required: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed test images (stride over the set); for speed alone, random 8-bit images
    when no data set is at hand (`required` raises instead)."""
    from training.data import DataError, load_dataset, strided_indices, to_tensor

    try:
        ds = load_dataset(data, "test", data_dir)
        if tuple(ds.x.shape[1:3]) != tuple(input_size[1:]):
            raise DataError(f"{data} holds {ds.x.shape[1]}x{ds.x.shape[2]} images, the model takes "
                            f"{input_size[1]}x{input_size[2]}")
        idx = strided_indices(len(ds), n)
        return to_tensor(ds.x[idx], device), torch.from_numpy(ds.y[idx]).to(device)
    except DataError:
        if required:
            raise
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, *input_size), generator=g).float().div(255).to(device)
        return x, torch.zeros(n, dtype=torch.long, device=device)


def measure_search(model: nn.Module, input_size: tuple[int, ...], device: torch.device,
                   batch_sizes: list[int], limit: float, seconds: float, norm: str, data: str,
                   data_dir: str | None, precisions: tuple[str, ...] = ("fp32",)) -> list[dict[str, Any]]:
    """Steady-state throughput of the continuous-batching engine (standard preset).

    The engine gets a stream of test images much longer than the batch, so
    finished images are replaced at once; we time a window after warm-up.
    Precisions are measured one after the other at each batch size (interleaved,
    so a noisy neighbour hits both alike); efficiency is against the float32 limit.
    ``efficiency_adjacent`` divides by the limit measured at the same batch size and
    precision just before the row: on a shared machine it is the honest ratio, since
    both sides saw the same neighbours.
    """
    pool_x, _ = fixed_test_images(1000, data, data_dir, device, input_size)
    rows: list[dict[str, Any]] = []
    for b, precision in ((b, p) for b in batch_sizes for p in precisions):
        cfg = SearchConfig.preset("standard", norm=norm, batch_size=b,  # type: ignore[arg-type]
                                  precision=precision)
        adjacent = measure_limit(model, input_size, device, [b], seconds=max(1.0, seconds / 4),
                                 precision=precision)["best_passes_per_s"]
        engine = SafeSpotSearch(model, cfg)
        fed = _feed(engine, pool_x, 0, 3 * b)
        warm_until = time.perf_counter() + min(2.0, seconds / 4)
        while time.perf_counter() < warm_until:
            engine.step()
            fed = _feed(engine, pool_x, fed, 3 * b)
        sync_device(device)
        passes = images = steps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            active = engine.active
            done = engine.step()
            passes += active * engine.cost
            images += len(done)
            steps += 1
            fed = _feed(engine, pool_x, fed, 3 * b)
        sync_device(device)
        wall = time.perf_counter() - start
        rows.append({"batch": b, "precision": precision, "images_per_s": round(images / wall, 3),
                     "passes_per_s": round(passes / wall, 1),
                     "efficiency": round(passes / wall / limit, 4),
                     "limit_adjacent": adjacent, "efficiency_adjacent": round(passes / wall / adjacent, 4),
                     "steps": steps,
                     "images": images})
    for r in rows:
        first = next(q for q in rows if q["precision"] == r["precision"])
        if first["batch"] == 1 and first["images_per_s"]:
            r["speedup_vs_batch_1"] = round(r["images_per_s"] / first["images_per_s"], 2)
        fp32 = next((q for q in rows if q["batch"] == r["batch"] and q["precision"] == "fp32"), None)
        if fp32 and fp32["images_per_s"] and r["precision"] != "fp32":
            r["vs_fp32"] = round(r["images_per_s"] / fp32["images_per_s"], 2)
    return rows


def _feed(engine: SafeSpotSearch, pool: torch.Tensor, fed: int, target: int) -> int:
    """Keep `target` images pending (the pool cycles); returns the running count fed."""
    while engine.pending < target:
        start = fed % len(pool)
        take = pool[start:start + max(1, target - engine.pending)]
        engine.submit(take, keys=list(range(fed, fed + len(take))))
        fed += len(take)
    return fed


def measure_memory(model: nn.Module, input_size: tuple[int, ...], device: torch.device,
                   batch_sizes: list[int], norm: str) -> list[dict[str, Any]]:
    """Peak memory while searching 2 x batch images (standard preset)."""
    from safespot import find_safe_spots
    from safespot_cli.bench_cmd import PeakMemory

    rows = []
    g = torch.Generator().manual_seed(1)
    for b in batch_sizes:
        x = torch.randint(0, 256, (2 * b, *input_size), generator=g).float().div(255).to(device)
        with PeakMemory(device) as mem:
            find_safe_spots(model, x, SearchConfig.preset("standard", norm=norm, batch_size=b,  # type: ignore[arg-type]
                                                          outer_steps=2))
        rows.append({"batch": b, "peak_bytes": mem.peak,
                     "kind": "peak allocated (CUDA)" if device.type == "cuda" else "peak RSS"})
    return rows


def measure_presets(model: nn.Module, device: torch.device, presets: list[str], n: int, norm: str,
                    data: str, data_dir: str | None) -> dict[str, Any]:
    """Safe-spot rate (paper protocol) and passes per image of each preset on n test images."""
    from safespot.evaluation import evaluate_methods
    from training.data import DataError

    try:
        x, y = fixed_test_images(n, data, data_dir, device, (3, 32, 32), required=True)
    except DataError as e:
        return {"skipped": f"no labelled test data: {e}"}
    out: dict[str, Any] = {}
    for name in presets:
        cfg = SearchConfig.preset(name.strip(), norm=norm)  # type: ignore[arg-type]
        start = time.perf_counter()
        report = evaluate_methods(model, x, y, cfg, methods=("s-full",))["s-full"]
        out[name.strip()] = {"safe_spot_rate": report.safe_spot_rate,
                             "grad_evals_per_image": round(report.grad_evals_per_image, 2),
                             "adv_acc": report.adv_acc, "seconds": round(time.perf_counter() - start, 1),
                             "n": n}
    if "paper" in out:
        paper = out["paper"]
        for row in out.values():
            row["passes_vs_paper"] = round(row["grad_evals_per_image"] / paper["grad_evals_per_image"], 4)
            row["rate_minus_paper_pp"] = round(100 * (row["safe_spot_rate"] - paper["safe_spot_rate"]), 2)
    return out
