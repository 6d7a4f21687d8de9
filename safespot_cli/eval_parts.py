"""`safespot eval --part K/M` and `safespot eval-merge`: one table measured by M processes.

A strong yardstick on a thousand images takes hours of one CPU thread; the
images are independent, so M processes (or machines) each measure every M-th
of the same strided images (`--part K/M`) and `eval-merge` joins their JSON
reports into the report one process would have written: the per-image
strings are interleaved back into image order and every figure is
recomputed from them or weighted by the images behind it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safespot_cli import common
from safespot_cli.errors import UsageError

SAME_IN_EVERY_PART = ("data", "threat", "preset", "config")


def parse_part(text: str) -> tuple[int, int]:
    """'K/M' -> (K, M) with 1 <= K <= M."""
    try:
        k, m = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--part takes K/M (for example 2/3), not {text!r}") from None
    if not 1 <= k <= m:
        raise UsageError(f"--part {text}: K must be between 1 and M")
    return k, m


def interleave(strings: list[str]) -> str:
    """Per-image strings of parts 1..M back in image order (part k held images k-1, k-1+M, ...)."""
    total = sum(len(s) for s in strings)
    return "".join(strings[i % len(strings)][i // len(strings)] for i in range(total))


def rate(bits: str, among: str | None = None) -> float:
    """Share of '1' in `bits`, over the images where `among` is '1' (all images without it)."""
    chosen = [b for i, b in enumerate(bits) if among is None or among[i] == "1"]
    return round(chosen.count("1") / len(chosen), 4) if chosen else float("nan")


def weighted(values: list[float], weights: list[int]) -> float:
    return round(sum(v * w for v, w in zip(values, weights, strict=True)) / max(sum(weights), 1), 4)


def merge_method(parts: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """One method's report from its parts' (see safespot/evaluation.py's MethodReport)."""
    first = parts[0]
    out = dict(first)
    per_image = {key: interleave([p["per_image"][key] for p in parts])
                 for key in first.get("per_image", {})}
    correct_before = per_image.get("correct_before")
    out["clean_acc"] = weighted([p["clean_acc"] for p in parts], sizes)
    if "safe_spot_rate" in first:
        if correct_before is None:
            raise UsageError("these reports keep no per-image outcomes (made by an older safespot); "
                             "measure the parts again to merge them")
        out["grad_evals_per_image"] = weighted([p["grad_evals_per_image"] for p in parts], sizes)
        out["seconds"] = round(sum(p["seconds"] for p in parts), 2)
    if "found" in per_image:
        assert correct_before is not None
        found = "".join("1" if f == c == "1" else "0" for f, c in zip(per_image["found"], correct_before,
                                                                      strict=True))
        out["found"] = found.count("1")
        out["found_rate"] = rate(per_image["found"], correct_before)
        out["outer_steps_mean"] = weighted([p["outer_steps_mean"] for p in parts], sizes)
        out["safe_at_start_rate"] = weighted([p["safe_at_start_rate"] for p in parts],
                                             [p["per_image"]["correct_before"].count("1") for p in parts])
    out["attacks"] = {}
    for suite, entry in first["attacks"].items():
        entries = [p["attacks"][suite] for p in parts]
        held = interleave([e["held"] for e in entries])
        merged = dict(entry, held=held, adv_acc=rate(held), seconds=round(sum(e["seconds"] for e in entries), 1),
                      survivors={a: sum(e["survivors"][a] for e in entries) for a in entry["survivors"]})
        if "safe_spot_rate" in entry:
            merged["safe_spot_rate"] = rate(held, correct_before)
        if "found_but_broken" in entry:
            merged["found_but_broken"] = sum(e["found_but_broken"] for e in entries)
            both = "".join("1" if f == h == "1" else "0" for f, h in zip(per_image["found"], held, strict=True))
            merged["found_and_held_rate"] = rate(both, correct_before)
        out["attacks"][suite] = merged
    if "safe_spot_rate" in first:
        out["safe_spot_rate"] = out["attacks"]["pgd20"]["safe_spot_rate"]
    out["adv_acc"] = out["attacks"]["pgd20"]["adv_acc"]
    if per_image:
        out["per_image"] = per_image
    return out


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of `safespot eval` on all n images, from the reports of its M parts."""
    if any("part" not in r for r in reports):
        raise UsageError("every report to merge must come from `safespot eval --part K/M`")
    reports = sorted(reports, key=lambda r: r["part"]["k"])
    m = len(reports)
    if [r["part"]["k"] for r in reports] != list(range(1, m + 1)) or any(r["part"]["of"] != m for r in reports):
        found = ", ".join(f"{r['part']['k']}/{r['part']['of']}" for r in reports)
        raise UsageError(f"need parts 1/{m} to {m}/{m}, each once; got {found}")
    first = reports[0]
    for r in reports[1:]:
        for key in SAME_IN_EVERY_PART:
            if r.get(key) != first.get(key):
                raise UsageError(f"part {r['part']['k']} differs from part 1 in {key!r}: not one measurement")
        if r["model"]["sha256"] != first["model"]["sha256"] or r["part"]["n_all"] != first["part"]["n_all"]:
            raise UsageError(f"part {r['part']['k']} measured another model or another --n than part 1")
        if r["methods"].keys() != first["methods"].keys():
            raise UsageError(f"part {r['part']['k']} measured other methods than part 1")
    sizes = [r["n"] for r in reports]
    if sum(sizes) != first["part"]["n_all"]:
        raise UsageError(f"the parts hold {sum(sizes)} images, not the {first['part']['n_all']} of --n")
    out = {key: value for key, value in first.items() if key != "part"}
    out["n"] = sum(sizes)
    out["seconds"] = round(sum(r["seconds"] for r in reports), 1)
    out["merged_from"] = [{"part": f"{r['part']['k']}/{m}", "n": r["n"], "seconds": r["seconds"],
                           "device": r.get("device"), "torch_threads": r.get("torch_threads")} for r in reports]
    out["methods"] = {name: merge_method([r["methods"][name] for r in reports], sizes) for name in first["methods"]}
    return out


HELP = """Join the JSON reports of `safespot eval --part 1/M` ... `--part M/M` (the same
model, data, threat and settings) into the report `safespot eval` would have
written on all --n images: per-image outcomes back in image order, rates
recomputed from them, counts and seconds summed (seconds: the parts' own
time, added, not wall time).

example:
  safespot eval --model cifar10 --n 1000 --methods s-full --attack autoattack --part 1/2 --json p1.json &
  safespot eval --model cifar10 --n 1000 --methods s-full --attack autoattack --part 2/2 --json p2.json
  safespot eval-merge p1.json p2.json --json eval.json"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "eval-merge", "join the reports of `safespot eval --part`", HELP, run)
    p.add_argument("reports", nargs="+", metavar="PART.json")
    common.add_option(p, "--json")


def read_reports(paths: list[str]) -> list[dict[str, Any]]:
    """The JSON reports of `safespot eval` at `paths`; UsageError naming one that cannot be read."""
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: not a readable JSON report ({e})") from None
    return reports


def run(args: argparse.Namespace) -> int:
    from safespot_cli.eval_cmd import markdown_table

    reports = read_reports(args.reports)
    try:
        merged = merge_reports(reports)
    except (KeyError, TypeError) as e:
        raise UsageError(f"not reports of `safespot eval` (missing {e})") from None
    print(markdown_table(merged))
    if args.json_out:
        common.write_json(args.json_out, merged)
    return 0
