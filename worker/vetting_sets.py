"""Which images a checkpoint is vetted on: its domain, then the vetting set of that domain.

A *domain* names what a model's images are ("cifar10").  A checkpoint's metadata says it
(``ModelInfo.domain``); a checkpoint whose metadata has none (the files written before the
field existed) gets the domain of the one shipped vetting set whose class names and image
size equal its own, if exactly one does.

The set of a domain, first found wins:

1. ``SAFESPOT_VETTING_DATA``, an ``.npz`` file (used for its declared ``domain``, or for
   every model it fits when it declares none) or a folder of ``<domain>.npz`` files;
2. the set shipped in the package, ``models/vetting/<domain>.npz``.

A set holds ``x`` (uint8 N,H,W,C) and ``y`` (or ``x_test``/``y_test``), and optionally
``class_names`` and ``domain`` (the shipped ones have both: scripts/make_vetting_set.py).
Every function here answers a :class:`VettingSet` or, as a string, the reason there is none;
the checkpoint then stays ``unvetted``.  NumPy only, files read with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import VETTING_DIR

# A domain becomes a file name (<domain>.npz): metadata is untrusted, so no path can hide in it.
DOMAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class VettingSet:
    path: Path
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,)
    domain: str  # "" when the file declares none
    class_names: tuple[str, ...]  # () when the file declares none
    shipped: bool = False

    @property
    def label(self) -> str:
        where = "shipped" if self.shipped else "SAFESPOT_VETTING_DATA"
        return f"{self.path.name} ({where}, {len(self.x)} images)"


@dataclass(frozen=True)
class Domain:
    name: str
    source: str  # "metadata" | "classes"


def load_set(path: Path, shipped: bool = False) -> VettingSet | str:
    """The arrays of one ``.npz`` vetting set, or why it cannot be one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = ("x_test", "y_test") if "x_test" in f.files else ("x", "y")
            if not all(k in f.files for k in keys):
                return f"{path.name} has no {keys[0]}/{keys[1]} arrays"
            x, y = f[keys[0]], f[keys[1]]
            domain = str(f["domain"]) if "domain" in f.files else ""
            names = tuple(str(c) for c in f["class_names"]) if "class_names" in f.files else ()
    except (OSError, ValueError) as e:  # not a zip, a pickled array, a truncated file
        return f"{path.name} is not a readable .npz vetting set ({type(e).__name__})"
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        return f"{path.name}: images must be uint8 (N, H, W, C) with C 1 or 3"
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or int(y.min()) < 0:
        return f"{path.name}: labels must be N non-negative integers"
    return VettingSet(path, x, y.astype(np.int64), domain, names, shipped)


@functools.cache
def shipped_sets() -> dict[str, VettingSet]:
    """The package's sets by domain (package data: read once a process)."""
    sets = {}
    for path in sorted(VETTING_DIR.glob("*.npz")):
        loaded = load_set(path, shipped=True)
        if isinstance(loaded, VettingSet):
            sets[loaded.domain or path.stem] = loaded
    return sets


def checkpoint_domain(declared: str, class_names: Sequence[str],
                      input_size: Sequence[int]) -> Domain | str:
    """The metadata's domain, else the one inferred from the classes and input size."""
    if declared:
        if not DOMAIN_NAME.match(declared):
            return f"invalid domain {declared[:80]!r} in the metadata (expected [a-z0-9_-], at most 64)"
        return Domain(declared, "metadata")
    matches = [d for d, s in shipped_sets().items()
               if s.class_names == tuple(class_names) and image_size(s) == tuple(input_size)]
    if len(matches) == 1:
        return Domain(matches[0], "classes")
    shipped = ", ".join(sorted(shipped_sets())) or "none"
    return (f"the metadata names no domain, and no shipped vetting set (shipped: {shipped}) has "
            f"its {len(class_names)} class names and input size {tuple(input_size)}")


def vetting_set(domain: str, configured: Path | None) -> VettingSet | str:
    """The set for `domain`: the operator's (SAFESPOT_VETTING_DATA) first, then the shipped one."""
    if configured is not None:
        if configured.is_dir():
            candidate = configured / f"{domain}.npz"
            if candidate.is_file():
                return _declared_for(load_set(candidate), domain)
        elif configured.is_file():
            loaded = load_set(configured)
            if isinstance(loaded, str) or not loaded.domain or loaded.domain == domain:
                return loaded
        else:
            return f"SAFESPOT_VETTING_DATA={configured} is neither a file nor a folder"
    shipped = shipped_sets().get(domain)
    if shipped is None:
        return (f"no vetting set for domain {domain!r} (shipped: {', '.join(sorted(shipped_sets())) or 'none'}; "
                f"an operator can add {domain}.npz to a SAFESPOT_VETTING_DATA folder)")
    return shipped


def misfit(vset: VettingSet, num_classes: int, class_names: Sequence[str],
           input_size: Sequence[int]) -> str | None:
    """Why the set cannot measure this model (input size, classes), or None when it can."""
    if tuple(int(v) for v in input_size) != image_size(vset):
        return (f"{vset.path.name} holds {vset.x.shape[1]}x{vset.x.shape[2]} images, "
                f"the model takes {tuple(input_size)}")
    if int(vset.y.max()) >= num_classes:
        return f"{vset.path.name} has labels up to {int(vset.y.max())}, the model {num_classes} classes"
    if vset.class_names:
        if len(vset.class_names) != num_classes or (class_names and tuple(class_names) != vset.class_names):
            return f"{vset.path.name}'s classes {list(vset.class_names)[:12]} are not the model's"
    elif int(vset.y.max()) + 1 != num_classes:
        return f"{vset.path.name} has {int(vset.y.max()) + 1} classes, the model {num_classes}"
    return None


def image_size(vset: VettingSet) -> tuple[int, int, int]:
    """(C, H, W) a model must take to be vetted on the set (grey images are fed as RGB)."""
    return 3, int(vset.x.shape[1]), int(vset.x.shape[2])


def _declared_for(loaded: VettingSet | str, domain: str) -> VettingSet | str:
    if isinstance(loaded, VettingSet) and loaded.domain and loaded.domain != domain:
        return f"{loaded.path.name} declares domain {loaded.domain!r}, not {domain!r}"
    return loaded


def for_model(declared_domain: str, num_classes: int, class_names: Sequence[str],
              input_size: Sequence[int], configured: Path | None) -> tuple[VettingSet, Domain] | dict[str, str | None]:
    """The set a model is vetted on and its domain, or the record's ``vetting`` entry saying
    why there is none (``{"skipped": reason, "domain": ..., "domain_from": ...}``)."""
    domain = checkpoint_domain(declared_domain, class_names, input_size)
    if isinstance(domain, str):
        return {"skipped": domain, "domain": declared_domain or None, "domain_from": None}
    chosen = vetting_set(domain.name, configured)
    if (isinstance(chosen, VettingSet) and not chosen.domain and domain.name in shipped_sets()
            and misfit(chosen, num_classes, class_names, input_size)):
        chosen = shipped_sets()[domain.name]  # a file declaring no domain serves only the models it fits
    reason = chosen if isinstance(chosen, str) else misfit(chosen, num_classes, class_names, input_size)
    if reason is not None:
        return {"skipped": reason, "domain": domain.name, "domain_from": domain.source}
    assert isinstance(chosen, VettingSet)
    return chosen, domain
