"""`safespot data`: download, import and list the public data sets (training/public_data.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safespot_cli.common import add_command
from safespot_cli.errors import UsageError

NAMES = ("cifar10", "tinyimagenet")
HELP = """Provide the data sets that training reads, in SAFESPOT_DATA_DIR (or --data-dir;
a test set can also be a larger vetting set: SAFESPOT_VETTING_DATA): the standard
public archives, sha256-checked, resumable (run it again after an interruption),
converted to .npz files (uint8 NHWC x, int64 y).
Nothing is done for a set already present (--force redoes it).

examples:
  safespot data download cifar10                 # cifar10_train.npz, cifar10_test.npz
  safespot data download tinyimagenet            # tinyimagenet_train.npz, tinyimagenet_val.npz
  safespot data import ~/Downloads/cifar-10-python.tar.gz   # an offline copy (or its extracted folder)
  safespot data import tiny-imagenet-200 --size 32 --data-dir data/tiny32   # the photo model's 32x32 set
  safespot data list
  safespot data nonphoto --out data/nonphoto --heldout-photos tiny-imagenet-200   # OOD sets, calibration mix
  SAFESPOT_CIFAR10_URL=https://mirror.example/cifar-10-python.tar.gz safespot data download cifar10"""


def mirror_settings() -> Any:
    """SAFESPOT_CIFAR10_URL / _SHA256, SAFESPOT_TINYIMAGENET_URL / _SHA256: another copy of
    an archive (a mirror, a proxy); built on use, so that `--help` stays instant."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class MirrorSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="SAFESPOT_", extra="ignore")

        cifar10_url: str | None = None
        cifar10_sha256: str | None = None
        tinyimagenet_url: str | None = None
        tinyimagenet_sha256: str | None = None

    return MirrorSettings()


def register(sub: Any) -> None:
    p = add_command(sub, "data", "download, import or list the training data sets", HELP, run)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None, help="default: $SAFESPOT_DATA_DIR or ./data")
    d = actions.add_parser("download", parents=[common], help="fetch a public archive and convert it")
    d.add_argument("name", choices=NAMES)
    d.add_argument("--url", default=None, help="another copy of the archive (default: the publisher's, "
                                               "or $SAFESPOT_<NAME>_URL)")
    d.add_argument("--sha256", default=None, help="the copy's sha256 (default: the published archive's)")
    d.add_argument("--force", action="store_true", help="redo a set already present")
    d.add_argument("--keep-archive", action="store_true", help="keep the archive after converting it")
    d.add_argument("--retries", type=int, default=3, help="resumes within this run after a cut transfer")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    i = actions.add_parser("import", parents=[common], help="convert an offline copy (archive or folder)")
    i.add_argument("path", type=Path, help="cifar-10-python.tar.gz, tiny-imagenet-200.zip or their folders")
    i.add_argument("--sha256", default=None, help="accept an archive with this sha256 instead")
    i.add_argument("--force", action="store_true")
    i.add_argument("--exclude-classes", default="", metavar="WNID[,WNID]",
                   help="Tiny ImageNet: leave out classes a copy adds to the standard 200")
    i.add_argument("--size", type=int, default=None,
                   help="Tiny ImageNet: shrink the 64x64 images to SIZE x SIZE (32: a 2x2 box average)")
    n = actions.add_parser("nonphoto", parents=[common], help="OOD sets that are not photos of the model's classes, and a "
                                            "calibration mix (docs/ood.md)")
    n.add_argument("--out", type=Path, default=None, help="folder to write into (default: the data directory)")
    n.add_argument("--n", type=int, default=1000, help="images per evaluation set")
    n.add_argument("--size", type=int, default=32, help="image side in pixels")
    n.add_argument("--seed", type=int, default=0, help="seed of the evaluation sets")
    n.add_argument("--calibration-seed", type=int, default=None,
                   help="seed of the calibration mix; must differ from --seed (default: --seed + 1)")
    n.add_argument("--n-outliers", type=int, default=2000,
                   help="images in the calibration mix (ood-calibrate holds out 1,000 of them)")
    n.add_argument("--calibration-kinds", default=None, metavar="KIND[,KIND]",
                   help="what the calibration mix draws from, in turn (default: texture, text, screenshot, "
                        "gaussian, uniform, and photos with --heldout-photos)")
    n.add_argument("--heldout-photos", type=Path, default=None, metavar="TINY_IMAGENET",
                   help="a Tiny ImageNet copy (folder or zip) with the held-out classes' train/ images")
    n.add_argument("--heldout-classes", default=None, metavar="WNID[,WNID]",
                   help="classes the model does not have (default: n02480855,n10148035, the two "
                        "the public copy adds to the standard 200)")
    for action in ("list", "status"):
        s = actions.add_parser(action, parents=[common], help="what is present")
        s.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from training.data import DataError, default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        if args.action == "download":
            return _download(args, data_dir)
        if args.action == "import":
            return _import(args, data_dir)
        if args.action == "nonphoto":
            return _nonphoto(args, data_dir)
        return _list(args, data_dir)
    except (DataError, OSError) as e:  # a bad archive, a full disk, a read-only directory: no traceback
        raise UsageError(str(e)) from None


def _download(args: argparse.Namespace, data_dir: Path) -> int:
    from training.public_data import download_set

    mirror = mirror_settings()
    url = args.url or getattr(mirror, f"{args.name}_url")
    sha256 = args.sha256 or getattr(mirror, f"{args.name}_sha256")
    outputs = download_set(args.name, data_dir, url=url, sha256=sha256, force=args.force,
                           keep_archive=args.keep_archive, progress=not args.quiet, retries=args.retries)
    _report(args.name, data_dir, outputs)
    return 0


def _import(args: argparse.Namespace, data_dir: Path) -> int:
    from training.public_data import import_copy

    exclude = frozenset(w.strip() for w in args.exclude_classes.split(",") if w.strip())
    name, outputs = import_copy(args.path, data_dir, sha256=args.sha256, force=args.force,
                                exclude=exclude, size=args.size)
    _report(name, data_dir, outputs)
    return 0


def _nonphoto(args: argparse.Namespace, data_dir: Path) -> int:
    from training.nonphoto_sets import HELDOUT_WNIDS, MANIFEST, MIX_KINDS, write_sets
    from training.ood_sets import OUTLIER_VAL

    def listed(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
        return default if value is None else tuple(v.strip() for v in value.split(",") if v.strip())

    out = args.out or data_dir
    calibration_seed = args.seed + 1 if args.calibration_seed is None else args.calibration_seed
    manifest = write_sets(
        out, n=args.n, size=args.size, seed=args.seed, calibration_seed=calibration_seed,
        n_outliers=args.n_outliers, photos_from=args.heldout_photos,
        photo_wnids=listed(args.heldout_classes, HELDOUT_WNIDS),
        mix_kinds=listed(args.calibration_kinds, MIX_KINDS))
    for name, entry in manifest["evaluation"].items():
        print(f"{out / name}: {entry['n']} images ({entry['kind']}); "
              f"safespot ood-eval --ood-set {entry['kind']}={out / name}")
    cal = manifest["calibration"]
    counts = ", ".join(f"{k} {v['n']}" for k, v in cal["kinds"].items())
    print(f"{out / cal['file']}: {cal['n']} calibration images, seed {cal['seed']} ({counts}); "
          f"safespot ood-calibrate --outliers {out / cal['file']}")
    if cal["n"] <= OUTLIER_VAL:
        print(f"note: ood-calibrate holds out {OUTLIER_VAL} validation outliers of a checkpoint not trained "
              f"with outliers: this mix is too small for it (--n-outliers above {OUTLIER_VAL})")
    print(f"{out / MANIFEST}: seeds, sizes and versions")
    return 0


def _report(name: str, data_dir: Path, outputs: list[Path] | None) -> None:
    if outputs is None:
        print(f"{name}: already in {data_dir} (--force to redo)")
    for path in outputs or []:
        print(f"{name}: wrote {path}")


def _list(args: argparse.Namespace, data_dir: Path) -> int:
    from training.public_data import SETS, describe

    report: dict[str, Any] = {"data_dir": str(data_dir), "sets": {}}
    for name, s in SETS.items():
        files = [data_dir / f for f in s.outputs]
        report["sets"][name] = {"present": all(f.is_file() for f in files),
                                "files": [describe(f) if f.is_file() else {"file": f.name, "missing": True}
                                          for f in files]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"data directory: {data_dir}")
    for name, entry in report["sets"].items():
        print(f"{name}: {'present' if entry['present'] else f'missing (safespot data download {name})'}")
        for f in entry["files"]:
            if not f.get("missing"):
                print(f"  {f['file']}: x {tuple(f['x']['shape'])}, {f['bytes'] / 2**20:.1f} MiB"
                      + (f"; {f['source']}" if "source" in f else ""))
    return 0
