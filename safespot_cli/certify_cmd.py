"""`safespot certify`: certified radii before and after safe spots, resumable per image."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from safespot_cli import common
from safespot_cli.errors import UsageError

HELP = """Randomized smoothing (Cohen et al., 2019) on a fixed strided subset: for each
image, S-Full runs against the smoothed soft classifier (M noise draws per pass,
with its predicted label), then CERTIFY (n0, n, alpha) certifies the hard
smoothed classifier on the original and on the safe spot, and randomized PGD
(L2, --attack-eps) attacks the smoothed classifier on both (the paper's
empirical row).  One JSON line per image is appended to --out as soon as it is
done; run the same command again to resume where it stopped (a header line
records the settings, and a run with other settings is refused).  --json writes
the summary: certified accuracy at L2 radii 0.25, 0.5, 0.75, 1.0.

examples:
  safespot certify --model gaussian --n 200 --num 100000 --out docs/results/certify-gaussian.jsonl \\
      --json docs/results/certify-gaussian.json
  safespot certify --model gaussian --n 200 --num 100000 --out run.jsonl --summary-only"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "certify", "certified radii before/after safe spots (resumable)", HELP, run)
    common.add_model_args(p)
    p.set_defaults(model="gaussian")
    common.add_threat_args(p)
    p.set_defaults(norm="l2")
    common.add_eval_data_args(p)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=200, help="images, at a fixed stride over the set")
    p.add_argument("--sigma", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--samples", type=int, default=5, help="noise draws per pass (M)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--num", type=int, default=100_000, help="CERTIFY's n")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--attack-eps", type=float, default=0.5, help="L2 budget of the empirical attack")
    p.add_argument("--out", required=True, help="JSON lines, one per image (appended; resumable)")
    common.add_option(p, "--json")
    p.add_argument("--summary-only", action="store_true", help="summarise --out without certifying more")


def run(args: argparse.Namespace) -> int:
    import torch

    from safespot.certification import CertifySettings, certify_image, summarize
    from safespot_cli.eval_data import load_eval_data
    from training.data import to_tensor

    loaded, device = common.open_model(args)
    sigma = args.sigma or loaded.info.threat.get("sigma")
    if sigma is None:
        raise UsageError("--sigma is needed: the checkpoint records none")
    cfg = common.search_config(args, loaded.info)
    settings = CertifySettings(sigma=float(sigma), samples=args.samples, n0=args.n0, num=args.num,
                               alpha=args.alpha, attack_eps=args.attack_eps, seed=args.seed)
    data = load_eval_data(args.data, args.split, args.data_dir, loaded.info, args.n,
                          skip_unknown_classes=args.skip_unknown_classes)
    header = {"header": True, "model": common.model_ref(loaded, args.model), "data": data.name,
              "n": len(data.y), "settings": settings.to_dict(), "search": cfg.to_dict()}
    out = Path(args.out)
    done = read_lines(out, header)
    if not args.summary_only:
        if not done:
            out.parent.mkdir(parents=True, exist_ok=True)
            append(out, header)
        x = to_tensor(data.x, device)
        todo = [i for i in range(len(data.y)) if i not in done]
        with common.progress_bar(len(data.y), "certify") as update:
            update(len(done), len(data.y))
            for i in todo:
                line = certify_image(loaded.model, x[i], int(data.y[i]), i, cfg, settings)
                append(out, line)
                done[i] = line
                update(len(done), len(data.y))
    summary = {**{k: v for k, v in header.items() if k != "header"},
               "lines": str(out), "summary": summarize(done[i] for i in sorted(done)),
               "torch_threads": torch.get_num_threads(), "device": str(device)}
    print(json.dumps(summary["summary"], indent=2))
    if args.json_out:
        common.write_json(args.json_out, summary)
    return 0


def read_lines(path: Path, header: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The finished lines of an earlier run by image index; refuses one with other settings."""
    if not path.exists():
        return {}
    texts = [text for text in path.read_text().splitlines() if text.strip()]
    try:
        lines = [json.loads(text) for text in texts]
    except json.JSONDecodeError:
        try:  # a stop in the middle of a write leaves at most the last line half-written
            lines = [json.loads(text) for text in texts[:-1]]
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is damaged before its last line: {e}") from e
        path.write_text("".join(text + "\n" for text in texts[:-1]))
    if not lines or not lines[0].get("header"):
        raise UsageError(f"{path} has no header line: not a `safespot certify` output")
    first = lines[0]
    for key in ("model", "data", "n", "settings", "search"):
        if first.get(key) != header[key]:
            raise UsageError(f"{path} was made with another {key} ({json.dumps(first.get(key))[:200]}); "
                             "use another --out or the same settings")
    return {int(line["index"]): line for line in lines[1:]}


def append(path: Path, line: dict[str, Any]) -> None:
    """One line, flushed to disk before the next image starts (a stop loses at most one image)."""
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
