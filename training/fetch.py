"""Resumable, verified downloads of the public data set archives.

The archive grows in ``NAME.part`` beside its destination.  An interrupted
transfer resumes where it stopped with an HTTP ``Range`` request (a server
that ignores ``Range`` answers 200 and the part starts over), a few times
within one call and again on the next call.  The sha256 is checked before the
file takes its final name: a mismatch deletes the part and raises, so the
data directory never keeps a corrupt or substituted archive.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

import httpx

from training.data import DataError

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-\d+/(\d+|\*)$")


class DownloadError(DataError):
    code = "download_failed"


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, in one pass: the md5 lets a user compare with a
    publisher that only prints md5 sums."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def download(url: str, dest: Path, sha256: str, *, retries: int = 3, timeout_s: float = 60.0,
             progress: bool = True, retry_wait_s: float = 2.0) -> Path:
    """Fetch `url` to `dest` (resuming ``dest.part``) and check its sha256; return `dest`."""
    expected = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DownloadError(f"expected a sha256 of 64 hex digits, got {sha256!r}")
    if dest.is_file() and file_digests(dest)[0] == expected:  # kept from an earlier run
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout_s, progress, dest.name)
            break
        except httpx.HTTPError as e:  # refused, reset, timed out, cut short
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                kept = f"{have} bytes kept in {part}; " if have else ""
                raise DownloadError(f"{url}: {type(e).__name__}: {e} ({kept}run the command again "
                                    "to resume)") from None
            time.sleep(retry_wait_s * 2 ** attempt)
    digest, md5 = file_digests(part)
    if digest != expected:
        part.unlink()
        raise DownloadError(f"{url}: sha256 {digest} (md5 {md5}) is not the expected {expected}: "
                            "the file is corrupt or not the published archive; it was deleted. "
                            "For a mirror with another copy, pass its sha256 (--sha256).")
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, timeout_s: float, progress: bool, label: str) -> None:
    """Append the rest of `url` to `part` (or write it whole when the server ignores Range)."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout_s) as r:
        if r.status_code == 416:  # nothing after `have`: the part is whole (the sha256 decides)
            return
        if r.status_code == 206:
            match = _CONTENT_RANGE.match(r.headers.get("content-range", ""))
            if not match or int(match.group(1)) != have:
                raise DownloadError(f"{url}: the server resumed at the wrong place "
                                    f"({r.headers.get('content-range')!r}, asked for byte {have})")
            total = None if match.group(2) == "*" else int(match.group(2))
        elif r.status_code == 200:
            have, length = 0, r.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason_phrase}")
        # In a container log (no terminal) a bar line every 15 s, not ten a second.
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                disable=not progress, dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 15) as bar:
            for chunk in r.iter_bytes():  # as it arrives: a cut keeps every byte received
                f.write(chunk)
                bar.update(len(chunk))
