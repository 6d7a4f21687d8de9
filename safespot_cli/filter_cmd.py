"""`safespot filter`: protect image files on this machine, no server."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safespot_cli import common
from safespot_cli.errors import UsageError

HELP = """Filter image files on this machine (no server, no Redis).  Each image gets a nearby
"safe spot": a copy on which the model keeps its label under attack, written as a
lossless PNG that keeps the image's name: photo.jpg -> OUT/photo.safe.png.

Images go through the service's own intake (JPEG, PNG, WebP, GIF, BMP, TIFF; EXIF
orientation applied, colour profiles to sRGB, grayscale and alpha kept) and the
worker's search, so the results are those of POST /v1/filter with the same model
and settings.  Publish the PNG as it is: re-encoding it as JPEG (or resizing it)
erases the protection.

OUT is a folder (created when missing; folders given with --recursive keep their
structure inside it), or a .png file when there is exactly one input image.

The report (--json) is one JSON object:
  {"model": {...}, "settings": {...},
   "files": [{"input", "output", "status": "ok", "result": {the scores of
              GET /v1/jobs/{id}: prediction (with top5), safe_spot_found, linf, l2, psnr,
              robustness, verification, view, ood_score, ood_flag, model, preset, grad_evals,
              timings}},
             {"input", "status": "error", "error": {"code", "message"}}, ...],
   "summary": {"images", "written", "failed", "safe_spot_found", "seconds"}}
  --json          print it on stdout, and nothing else there (progress and
                  messages go to stderr): safe to pipe into jq
  --json FILE     write it to FILE; stdout keeps one line per image, then its
                  five most probable classes

Exit status: 0 every image written; 1 some inputs could not be read or filtered
(each is named on stderr with what to do; the others are still written); 2 a usage
error (nothing is done).

examples:
  safespot filter photo.jpg -o out/                 -> out/photo.safe.png
  safespot filter photo.jpg -o protected.png        one image, an explicit output file
  safespot filter photos/ -o out/ --recursive       a folder tree, its structure kept
  safespot filter a.jpg b.png -o out/ --preset fast --json report.json
  safespot filter photo.jpg -o out/ --json | jq '.files[0].result.psnr'
  safespot filter photo.jpg -o out/ --norm l2 --eps 0.5 --model adv
  SAFESPOT_DEFAULT_MODEL=my.safetensors safespot filter photos/ -o out/"""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
OUTPUT_SUFFIX = ".safe.png"
DEFAULT_MAX_PIXELS = 40_000_000  # the service's default SAFESPOT_MAX_PIXELS
ADVICE = {  # what to do, by error code (service.images and worker codes)
    "not_found": "check the path",
    "unreadable": "check the file's permissions",
    "unsupported_format": "convert it to one of these formats",
    "unsupported_pixel_format": "convert it to 8-bit RGB first",
    "corrupt_image": "re-save or re-export the file and try again",
    "empty_file": "the file is empty: export it again",
    "too_many_pixels": "resize it, or raise --max-pixels",
    "no_images": "give image files, or add --recursive for images in subfolders",
}


def register(sub: Any) -> None:
    p = common.add_command(sub, "filter", "protect image files locally (no server)", HELP, run)
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files and folders of images")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="output folder, or a .png file for a single image")
    p.add_argument("-r", "--recursive", action="store_true", help="also take images in subfolders")
    common.add_option(p, "--preset", help="search effort (default standard; paper is the paper's full search, slow)")
    common.add_option(p, "--norm", help="threat model (default linf)")
    common.add_option(p, "--eps", help="adversary budget in pixel units, e.g. 8/255 or 0.0314 (default: the "
                                       "one the model was trained for, else 8/255 L-inf, 0.5 L2)")
    common.add_option(p, "--delta")
    common.add_option(p, "--model", default=None, help="a shipped model (default, adv, ...) or a .safetensors "
                                                       "path (default: $SAFESPOT_DEFAULT_MODEL, else 'default')")
    common.add_options(p, "--device", "--threads")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images searched together (default 8; more is faster on a GPU, uses more memory)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,})")
    common.add_option(p, "--json", nargs="?", const="-", metavar="REPORT",
                      help="write the JSON report to REPORT, or print it on stdout with --json alone "
                           "(put --json after the inputs, or write --json -)")


# ------------------------------------------------------------------ planning
@dataclass
class Item:
    source: Path
    name: Path  # the output's path inside OUT, before the suffix: photo, or sub/photo
    output: Path | None = None


@dataclass
class Failure:
    input: str
    code: str
    message: str

    def entry(self) -> dict[str, Any]:
        return {"input": self.input, "status": "error", "error": {"code": self.code, "message": self.message}}

    def say(self) -> None:
        """On stderr, above the progress bar when there is one."""
        from tqdm import tqdm

        advice = ADVICE.get(self.code)
        tqdm.write(f"skipping {self.input}: {self.message} [{self.code}]" + (f"; {advice}" if advice else ""),
                   file=sys.stderr)


def collect(inputs: list[str], recursive: bool, out: Path) -> tuple[list[Item], list[Failure]]:
    """Image files named or found in folders (sorted), and the inputs that are not there."""
    items: list[Item] = []
    failures: list[Failure] = []
    seen: set[Path] = set()
    out_resolved = out.resolve()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = [f for f in sorted(path.rglob("*") if recursive else path.iterdir())
                     if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                     and not f.name.endswith(OUTPUT_SUFFIX)
                     and out_resolved not in f.resolve().parents]  # not last run's outputs
            if not found:
                hint = "" if recursive else " (subfolders are skipped without --recursive)"
                failures.append(Failure(raw, "no_images", f"no image files in this folder{hint}"))
            for f in found:
                if f.resolve() not in seen:
                    seen.add(f.resolve())
                    items.append(Item(f, f.relative_to(path).with_suffix("")))
        elif path.is_file():
            if path.resolve() not in seen:  # a file named here is tried whatever its suffix
                seen.add(path.resolve())
                items.append(Item(path, Path(path.stem)))
        else:
            failures.append(Failure(raw, "not_found", "no such file or folder"))
    return items, failures


def plan_outputs(items: list[Item], out: Path, single_file_allowed: bool) -> None:
    """Set each item's output path; UsageError when OUT cannot hold them."""
    suffix = out.suffix.lower()
    if not out.is_dir() and suffix in IMAGE_SUFFIXES - {".png"}:
        raise UsageError(f"OUT {out} would be a {suffix} file: write PNG (a folder, or a .png file); "
                         "a lossy re-encode would erase the protection")
    if not out.is_dir() and suffix == ".png":
        if len(items) != 1 or not single_file_allowed:
            raise UsageError(f"OUT {out} is a .png file but there are {len(items)} images: give a folder")
        items[0].output = out
    else:
        if out.exists() and not out.is_dir():
            raise UsageError(f"OUT {out} is a file: give a folder (or a .png path for one image)")
        by_output: dict[Path, list[Item]] = defaultdict(list)
        for item in items:
            by_output[out / (str(item.name) + OUTPUT_SUFFIX)].append(item)
        for path, group in by_output.items():
            for item in group:  # photo.jpg and photo.png: photo.jpg.safe.png, photo.png.safe.png
                item.output = path if len(group) == 1 else out / (str(item.name) + item.source.suffix + OUTPUT_SUFFIX)
    sources = {item.source.resolve() for item in items}
    for item in items:
        assert item.output is not None
        if item.output.resolve() in sources:
            raise UsageError(f"{item.output} is also an input: choose another OUT")


def check_report_path(report: str | None, items: list[Item]) -> None:
    if report in (None, "-"):
        return
    path = Path(str(report))
    if path.suffix.lower() in IMAGE_SUFFIXES or path.resolve() in {i.source.resolve() for i in items}:
        raise UsageError(f"--json {report}: that looks like an image, not a report; put --json after "
                         "the inputs (--json report.json), or use --json - for stdout")


# --------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.batch_size < 1 or args.max_pixels < 1:
        raise UsageError("--batch-size and --max-pixels must be at least 1")
    items, failures = collect(args.inputs, args.recursive, out)
    if not items:
        for f in failures:
            print(f"safespot filter: {f.input}: {f.message}; {ADVICE.get(f.code, '')}", file=sys.stderr)
        raise UsageError("no images to filter")
    single = len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
    plan_outputs(items, out, single)
    check_report_path(args.json_out, items)
    # Like the service: the default model (SAFESPOT_DEFAULT_MODEL, else the shipped one) is "default".
    args.model_id = Path(args.model).stem if args.model else "default"
    args.model = args.model or os.environ.get("SAFESPOT_DEFAULT_MODEL") or "default"
    return Filtering(args, items, failures).run()


class Filtering:
    """One run: the model, the processor, the progress bar and the report."""

    def __init__(self, args: argparse.Namespace, items: list[Item], failures: list[Failure]) -> None:
        self.args = args
        self.items = items
        self.failures = failures
        self.to_stdout = args.json_out == "-"
        self.lines = sys.stderr if self.to_stdout else sys.stdout  # per-image lines
        self.entries: list[dict[str, Any]] = [f.entry() for f in failures]
        self.fractions: dict[str, float] = {}
        self.done = 0

    def run(self) -> int:
        from PIL import Image
        from tqdm import tqdm

        from worker.processor import build_processor

        args = self.args
        for f in self.failures:
            f.say()
        try:
            loaded, device = common.open_model(args)
        except UsageError as e:
            raise UsageError(f"{e} (choose one with --model NAME or --model PATH.safetensors, "
                             "or set SAFESPOT_DEFAULT_MODEL)") from None
        Image.MAX_IMAGE_PIXELS = args.max_pixels  # our own check in decode_upload answers first
        eps = args.eps if args.eps is not None else loaded.info.budget(args.norm)
        self.settings = {"preset": args.preset, "norm": args.norm, "eps": eps,
                         "delta": args.delta if args.delta is not None else eps, "device": str(device)}
        self.processor = build_processor(None, loaded, args.model_id, max_batch=args.batch_size,
                                         max_image_pixels=args.max_pixels, progress=self.on_progress)
        started = time.time()
        with tqdm(total=len(self.items), unit="img", desc="filter", file=sys.stderr, dynamic_ncols=True,
                  disable=None, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} images "
                                           "[{elapsed}<{remaining}]") as self.bar:
            self.loop()
        order = {str(item.source): i for i, item in enumerate(self.items)}
        self.entries.sort(key=lambda e: order.get(e["input"], -1))  # inputs not found first
        written = [e for e in self.entries if e["status"] == "ok"]
        failed = len(self.entries) - len(written)
        summary = {"images": len(self.entries), "written": len(written), "failed": failed,
                   "safe_spot_found": sum(bool(e["result"]["safe_spot_found"]) for e in written),
                   "seconds": round(time.time() - started, 2)}
        report = {"model": {**self.processor.model_ref, "arch": loaded.info.arch},
                  "settings": self.settings, "files": self.entries, "summary": summary}
        if args.json_out:
            common.write_json(args.json_out, report)
        s = summary
        tail = f"; report: {args.json_out}" if args.json_out and not self.to_stdout else ""
        print(f"{s['written']} of {s['images']} images written to {args.out}, safe spot found for "
              f"{s['safe_spot_found']}" + (f"; {failed} failed (see above)" if failed else "") + tail,
              file=self.lines)
        if written:  # one verification for the whole run: the settings are shared
            print(f"'found' means these attacks failed on the written image: "
                  f"{written[0]['result']['verification']['summary']}", file=self.lines)
        return 1 if failed else 0

    def loop(self) -> None:
        from service.errors import SafeSpotError
        from service.images import decode_upload
        from worker.errors import JobError
        from worker.protocol import FilterRequest

        pending = list(reversed(self.items))
        in_flight: dict[str, Item] = {}
        while pending or in_flight:
            while pending and self.processor.free_slots > 0:
                item = pending.pop()
                job_id = f"{len(self.items) - len(pending):06d}"
                try:
                    data = item.source.read_bytes()
                    decoded = decode_upload(data, max_pixels=self.args.max_pixels)
                    request = FilterRequest(job_id=job_id, preset=self.settings["preset"],
                                            norm=self.settings["norm"], eps=self.settings["eps"],
                                            delta=self.settings["delta"], reencode=None, webhook_url=None,
                                            submitted_at=time.time(), image=decoded.info)
                    self.processor.add(job_id, request, decoded.png)
                except OSError as e:
                    self.fail(item, "unreadable", f"cannot read it: {e.strerror or e}")
                except (SafeSpotError, JobError) as e:
                    self.fail(item, e.code, e.message)
                else:
                    in_flight[job_id] = item
            for finished in self.processor.step():
                item = in_flight.pop(finished.job_id)
                self.fractions.pop(finished.job_id, None)
                if finished.error is not None:
                    self.fail(item, finished.error.code, finished.error.message)
                else:
                    self.write(item, finished.png or b"", finished.result)
            self.show_progress()

    # ------------------------------------------------------------ outcomes
    def write(self, item: Item, png: bytes, result: Any) -> None:
        assert item.output is not None
        try:
            common.atomic_write(item.output, png)
        except OSError as e:
            self.fail(item, "write_failed", f"cannot write {item.output}: {e.strerror or e}")
            return
        self.entries.append({"input": str(item.source), "output": str(item.output), "status": "ok",
                             "result": result})
        self.done += 1
        found = "yes" if result["safe_spot_found"] else "NO"
        psnr = "inf" if result["psnr"] is None else f"{result['psnr']:.1f}"
        p = result["prediction"]
        ranked = [f"    {rank}. {e['class_name']}  {100 * e['probability']:.1f}%"
                  for rank, e in enumerate(p.get("top5", []), 1)]
        self.bar.write("\n".join([
            f"{item.source} -> {item.output}  {p['class_name']} ({100 * p['confidence']:.0f}%)  "
            f"safe spot: {found}  PSNR {psnr} dB  L-inf {round(255 * result['linf'])}/255", *ranked]),
            file=self.lines)

    def fail(self, item: Item, code: str, message: str) -> None:
        failure = Failure(str(item.source), code, message)
        self.entries.append(failure.entry())
        self.done += 1
        failure.say()

    def on_progress(self, job_id: str, progress: Any) -> None:
        self.fractions[job_id] = float(progress.get("fraction") or 0.0)

    def show_progress(self) -> None:
        position = self.done + sum(self.fractions.values())
        if position > self.bar.n:
            self.bar.update(position - self.bar.n)
