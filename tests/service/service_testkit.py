"""Test helpers of the service tests: an in-memory job queue and image makers.

`FakeJobBackend` is a test double for the *queue* (the JobBackend protocol),
not for Redis: Redis itself is tested with a real server in
test_service_redis_backend.py.  Its checkpoints live in the real registry
(worker.registry, on a JSON file), so the routes meet the real rules.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image
from rq import Queue, get_current_job
from rq.serializers import JSONSerializer

from worker import protocol
from worker.protocol import CheckpointRecord, FilterRequest, JobView, TrainRequest
from worker.registry_stores import file_registry
from worker.rq_compat import CompatWorker

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
CLIENT_KEY = "client-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def client_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {CLIENT_KEY}"}


def admin_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def fake_result(request: FilterRequest) -> Any:
    """A FilterResult-shaped dict (the worker owns the real one)."""
    return {
        "prediction": {"label": 3, "class_name": "cat", "confidence": 0.9,
                       "top5": [{"label": 3, "class_name": "cat", "probability": 0.9},
                                {"label": 5, "class_name": "dog", "probability": 0.07}]},
        "safe_spot_found": True, "linf": request["eps"], "l2": 1.0, "psnr": 40.0,
        "robustness": {"attack": "pgd-20", "held": True, "margin": 1.0,
                       "confidence_under_attack": 0.8},
        "verification": {"norm": request["norm"], "eps": request["eps"], "on": "8-bit output",
                         "runs": [], "min_margin": 0.0, "passes": 0, "summary": "pgd-20",
                         "view": "whole image resized to 32x32", "guarantee": "empirical"},
        "view": {"kind": "resize", "input_size": [32, 32], "description": "whole image resized to 32x32"},
        "ood_score": 0.9, "ood_flag": False, "ood_method": "safespot",
        "model": {"name": "tiny", "sha256": "0" * 64, "checkpoint_id": "ckpt_test"},
        "preset": request["preset"], "threat": {"norm": request["norm"], "eps": request["eps"],
                                                "delta": request["delta"]},
        "config": {}, "grad_evals": 10, "reencode": None,
        "image": {"width": request["image"]["width"], "height": request["image"]["height"],
                  "mode": request["image"]["mode"]},
        "timings": {"queued_s": 0.0, "search_s": 0.1, "total_s": 0.1},
    }


class FakeJobBackend:
    """In-memory JobBackend.  `auto_finish=True` finishes each job as it is
    submitted (returning the upload as the "filtered" image)."""

    def __init__(self, *, auto_finish: bool = False, ready: bool = True) -> None:
        self.auto_finish = auto_finish
        self.is_ready = ready
        self.depth = 0
        self.jobs: dict[str, JobView] = {}
        self.requests: dict[str, FilterRequest] = {}
        self.uploads: dict[str, bytes] = {}
        self.images: dict[str, bytes] = {}
        self._registry_dir = tempfile.TemporaryDirectory(prefix="safespot-fake-registry-")  # removed with self
        self.registry = file_registry(Path(self._registry_dir.name))
        self.training: dict[str, TrainRequest] = {}
        self.lock = threading.Lock()

    # --- test controls
    def finish(self, job_id: str) -> None:
        with self.lock:
            request = self.requests[job_id]
            self.jobs[job_id].update({"status": "finished", "result": fake_result(request),
                                      "progress": {"phase": "done", "fraction": 1.0},
                                      "ended_at": time.time()})
            self.images[job_id] = self.uploads[job_id]

    def fail(self, job_id: str, code: str = "search_failed") -> None:
        with self.lock:
            self.jobs[job_id].update({"status": "failed", "error": {"code": code, "message": "it broke"}})

    def set_status(self, checkpoint_id: str, status: str) -> None:
        """What a worker's vetting verdict does."""
        self.registry.put({**self.checkpoints[checkpoint_id], "status": status})

    @property
    def checkpoints(self) -> dict[str, CheckpointRecord]:
        return {r["id"]: r for r in self.registry.records()}

    # --- JobBackend
    def submit_filter(self, request: FilterRequest, image_png: bytes) -> None:
        job_id = request["job_id"]
        with self.lock:
            self.requests[job_id] = request
            self.uploads[job_id] = image_png
            self.jobs[job_id] = JobView(id=job_id, status="queued", progress={"phase": "queued"},
                                        created_at=request["submitted_at"])
        if self.auto_finish:
            self.finish(job_id)

    def get_job(self, job_id: str) -> JobView | None:
        with self.lock:
            view = self.jobs.get(job_id)
            return JobView(**view) if view else None

    def get_result_image(self, job_id: str) -> bytes | None:
        return self.images.get(job_id)

    def queue_depth(self) -> int:
        return self.depth

    def ready(self) -> tuple[bool, str]:
        return (True, "1 worker") if self.is_ready else (False, "no live worker with a loaded model")

    def list_checkpoints(self) -> list[CheckpointRecord]:
        return self.registry.records()

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        self.registry.add(record)

    def activate_checkpoint(self, checkpoint_id: str, override: bool = False,
                            reason: str | None = None) -> CheckpointRecord:
        return self.registry.activate(checkpoint_id, override, reason)

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        self.registry.delete(checkpoint_id)

    def submit_training(self, request: TrainRequest) -> None:
        self.training[request["job_id"]] = request
        self.jobs[request["job_id"]] = JobView(id=request["job_id"], status="queued")

    def get_training(self, job_id: str) -> JobView | None:
        return self.jobs.get(job_id) if job_id in self.training else None


# ------------------------------------------------------------------- images
def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo(name: str = "chelsea.jpg") -> Image.Image:
    with Image.open(PHOTOS / name) as im:
        im.load()
        return im.copy()


def photo_bytes(name: str = "chelsea.jpg") -> bytes:
    return (PHOTOS / name).read_bytes()


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


# ------------------------------------------------------- hand-made image files
def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_16bit(rows: list[list[int]] | list[list[list[int]]], color_type: int) -> bytes:
    """A 16-bit PNG (color type 0 gray, 2 RGB, 6 RGBA) written by hand: Pillow
    cannot write 16-bit colour PNGs, but cameras and editors do."""
    import struct
    import zlib

    height, width = len(rows), len(rows[0])
    raw = b""
    for row in rows:
        values = [v for px in row for v in (px if isinstance(px, list) else [px])]
        raw += b"\x00" + struct.pack(f">{len(values)}H", *values)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims WIDTHxHEIGHT pixels (a decompression bomb:
    the data would inflate to gigabytes; the header alone must stop it)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit gray
    data = zlib.compress(b"\x00" * 4096, 9)  # the start of an all-black image
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def swapped_primaries_icc() -> bytes:
    """A minimal ICC v2 RGB profile whose red and green colorants are swapped
    relative to sRGB: converting it to sRGB turns red pixels green, which
    proves the conversion ran (a real profile from a camera would change
    colours only slightly)."""
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    text = b"desc" + b"\0" * 4 + struct.pack(">I", 8) + b"swapped\0" + b"\0" * (4 + 4 + 2 + 1 + 67)
    srgb_r, srgb_g, srgb_b = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    tags = [(b"desc", text), (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(*srgb_g)),
            (b"gXYZ", xyz(*srgb_r)), (b"bXYZ", xyz(*srgb_b)), (b"rTRC", curve),
            (b"gTRC", curve), (b"bTRC", curve), (b"cprt", b"text" + b"\0" * 4 + b"none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 20 + struct.pack(">I", 0)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


# --------------------------------------------------------- RQ job stand-ins
def stand_in_filter_job(request: dict) -> dict:
    """What a worker does, minus the search: progress in meta, image stored, result returned."""
    job = get_current_job()
    assert job is not None
    job.meta["progress"] = {"phase": "done", "fraction": 1.0, "batch_size": 1}
    job.save_meta()
    if request["preset"] == "paper":  # the tests' way of asking for a known failure
        job.meta["error"] = {"code": "model_error", "message": "no model"}
        job.save_meta()
        raise RuntimeError("no model")
    job.connection.set(protocol.result_image_key(request["job_id"]), b"PNG-BYTES", ex=60)
    return {"safe_spot_found": True, "preset": request["preset"]}


def install_stand_in_jobs(monkeypatch: Any) -> None:
    """Make `worker.jobs.filter_job` (protocol.FILTER_FUNC) resolve to the stand-in."""
    import sys
    import types

    module = types.ModuleType("worker.jobs")
    module.filter_job = stand_in_filter_job  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "worker.jobs", module)


def run_worker(redis_conn) -> None:
    """Run the queued jobs with RQ's own work loop.  The worker's prompt unsubscribe matters:
    RQ's own could wait up to 60 s at shutdown, as long as the stand-in's result image lives."""
    queue = Queue(protocol.FILTER_QUEUE, connection=redis_conn, serializer=JSONSerializer)
    CompatWorker([queue], connection=redis_conn, serializer=JSONSerializer).work(burst=True)
