"""`safespot eval-compare`: two measurements side by side on the images they share.

A stronger search is measured on a few hundred images, the shipped preset on a
thousand; the claim "within 2 points of the cap" is about the *same* images.
This joins the per-image outcomes of `safespot eval` reports (whole runs, or
parts of one) by the test-set index of each image, keeps the images both sides
measured and that the model classified correctly in both, and counts, image by
image, which side's safe spot held against the chosen suite.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from safespot_cli import common
from safespot_cli.errors import UsageError
from safespot_cli.eval_parts import read_reports

SAME_ON_BOTH_SIDES = ("data", "threat")


def image_indices(report: dict[str, Any]) -> list[int]:
    """The test-set index of each image of a report, in its per-image order.

    `safespot eval` takes ``n`` images at a fixed stride (``strided_indices``) and a
    part K/M every M-th of those from the K-th; the report's ``indices`` gives the
    stride (the set's size over the images asked for)."""
    from training.data import strided_indices

    part = report.get("part") or {"k": 1, "of": 1, "n_all": report["n"]}
    match = re.fullmatch(r"stride ([0-9.e+]+) from 0", str(report.get("indices", "")))
    if not match:
        raise UsageError(f"cannot tell which images were measured from indices={report.get('indices')!r}")
    total = report.get("total") or round(float(match.group(1)) * part["n_all"])
    chosen = strided_indices(int(total), int(part["n_all"]))[part["k"] - 1::part["of"]]
    if len(chosen) != report["n"]:
        raise UsageError(f"indices {report['indices']!r} give {len(chosen)} images, the report holds {report['n']}")
    return [int(i) for i in chosen]


def outcomes(reports: list[dict[str, Any]], method: str, suite: str) -> dict[int, tuple[bool, bool]]:
    """Test-set index -> (correct before, held against `suite`) over reports of disjoint images."""
    out: dict[int, tuple[bool, bool]] = {}
    for report in reports:
        try:
            entry = report["methods"][method]
            correct, held = entry["per_image"]["correct_before"], entry["attacks"][suite]["held"]
        except KeyError as e:
            raise UsageError(f"a report has no {e} for method {method!r} and suite {suite!r}") from None
        for index, c, h in zip(image_indices(report), correct, held, strict=True):
            if index in out:
                raise UsageError(f"image {index} is in two reports of one side: give disjoint parts")
            out[index] = (c == "1", h == "1")
    return out


def compare(side_a: list[dict[str, Any]], side_b: list[dict[str, Any]], method: str, suite: str) -> dict[str, Any]:
    """Safe-spot rates of both sides on the shared, correctly classified images, and the paired counts."""
    first = side_a[0]
    for report in side_a + side_b:
        for key in SAME_ON_BOTH_SIDES:
            if report.get(key) != first.get(key):
                raise UsageError(f"the reports differ in {key!r}: not the same images or threat")
        if report["model"]["sha256"] != first["model"]["sha256"]:
            raise UsageError("the reports measured different checkpoints")
    a, b = outcomes(side_a, method, suite), outcomes(side_b, method, suite)
    shared = sorted(a.keys() & b.keys())
    if any(a[i][0] != b[i][0] for i in shared):
        raise UsageError("the sides disagree on which originals are classified correctly: not the same model run")
    correct = [i for i in shared if a[i][0]]
    counts = {"both": 0, "a_only": 0, "b_only": 0, "neither": 0}
    for i in correct:
        key = {(True, True): "both", (True, False): "a_only", (False, True): "b_only"}.get((a[i][1], b[i][1]), "neither")
        counts[key] += 1
    held_a, held_b = counts["both"] + counts["a_only"], counts["both"] + counts["b_only"]
    n = len(correct)
    return {"method": method, "suite": suite, "shared_images": len(shared), "correct_originals": n,
            "a": {"held": held_a, "safe_spot_rate": round(held_a / n, 4) if n else None,
                  "config": first.get("config")},
            "b": {"held": held_b, "safe_spot_rate": round(held_b / n, 4) if n else None,
                  "config": side_b[0].get("config")},
            "paired": counts}


def describe(result: dict[str, Any], names: tuple[str, str]) -> str:
    n, paired = result["correct_originals"], result["paired"]
    lines = [f"{result['shared_images']} images in both, {n} classified correctly; "
             f"safe-spot rate under {result['suite']}:"]
    for side, name in zip(("a", "b"), names, strict=True):
        rate = result[side]["safe_spot_rate"]
        lines.append(f"  {name}: {result[side]['held']}/{n}" + (f" = {rate:.1%}" if rate is not None else ""))
    lines.append(f"image by image: {paired['both']} hold in both, {paired['a_only']} only in A, "
                 f"{paired['b_only']} only in B, {paired['neither']} in neither")
    return "\n".join(lines)


HELP = """Compare two measurements of `safespot eval` (the same model, data and threat) on
the images both measured: the safe-spot rate of one method under one suite on
each side, over the originals classified correctly, and image by image which
side held. A side is one report or several with disjoint images (parts, or
runs on different images), joined with commas.

example:
  safespot eval-compare cap-a.json,cap-b.json standard-1000.json --suite autoattack"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "eval-compare", "two `safespot eval` reports on their shared images", HELP, run)
    p.add_argument("a", metavar="A.json[,A2.json...]")
    p.add_argument("b", metavar="B.json[,B2.json...]")
    p.add_argument("--method", default="s-full", help="the method compared on both sides (default s-full)")
    p.add_argument("--suite", default="autoattack", help="which attack's outcomes (pgd20, apgd, autoattack)")
    common.add_option(p, "--json")


def run(args: argparse.Namespace) -> int:
    try:
        a, b = args.a.split(","), args.b.split(",")
        result = compare(read_reports(a), read_reports(b), args.method, args.suite)
    except (KeyError, TypeError) as e:
        raise UsageError(f"not reports of `safespot eval` (missing {e})") from None
    result["a"]["reports"], result["b"]["reports"] = a, b
    print(describe(result, ("A", "B")))
    if args.json_out:
        common.write_json(args.json_out, result)
    return 0
