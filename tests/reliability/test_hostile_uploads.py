"""Issue 7, item 1, end to end: bad uploads over a real socket to the API on a
real Redis, with a real worker listening.

tests/service covers the same cases against an in-memory queue; here each bad
upload must also leave Redis exactly as it was (no queued id, no RQ job, no
stored upload, nothing started: no worker time spent), a body over the byte
limit must be cut off while it streams through uvicorn, and the unusual but
valid images must come back from the worker as PNGs of their own size and mode.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.reliability.conftest import (
    Stack,
    client_auth,
    small_photo,
    stream_upload,
)
from tests.service.service_testkit import png_16bit, png_bomb, png_chunk, swapped_primaries_icc

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Corrupt EXIF data")]

LIMIT = 1024 * 1024  # the stack's SAFESPOT_MAX_UPLOAD_BYTES


# ------------------------------------------------------------- hostile files
def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _tiny(fmt: str, **params: Any) -> bytearray:
    return bytearray(_encode(Image.new("RGB", (8, 8), (10, 20, 30)), fmt, **params))


def gif_bomb() -> bytes:
    data = _tiny("GIF")
    data[6:10] = struct.pack("<HH", 65535, 65535)  # the logical screen
    return bytes(data)


def jpeg_bomb() -> bytes:
    data = _tiny("JPEG")
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def tiff_bomb() -> bytes:
    data = _tiny("TIFF")
    for tag in (256, 257):  # ImageWidth, ImageLength
        for kind, fmt in ((3, "<H"), (4, "<I")):
            at = data.find(struct.pack("<HHI", tag, kind, 1))
            if at >= 0:
                data[at + 8:at + 8 + struct.calcsize(fmt)] = struct.pack(fmt, 60000)
    return bytes(data)


def bmp_bomb() -> bytes:
    data = _tiny("BMP")
    data[18:26] = struct.pack("<ii", 100000, 100000)
    return bytes(data)


def webp_bomb() -> bytes:
    data = _tiny("WEBP", lossless=True)
    at = data.find(b"VP8L")
    data[at + 9:at + 13] = struct.pack("<I", 16383 | 16383 << 14)  # 16384 x 16384
    return bytes(data)


def png_text_bomb(kind: bytes) -> bytes:
    """An 8x8 PNG with a metadata chunk that inflates to 32 MB."""
    png = _encode(Image.new("RGB", (8, 8)), "PNG")
    bomb = zlib.compress(b"\0" * (32 * 1024 * 1024), 9)
    prefix = {b"zTXt": b"Comment\0\0", b"iCCP": b"icc\0\0", b"iTXt": b"Comment\0\x01\0\0\0"}[kind]
    return png[:33] + png_chunk(kind, prefix + bomb) + png[33:]


def truncated(name: str) -> bytes:
    data = small_photo(size=(160, 120), fmt=name)
    return data[: len(data) * 2 // 3]


PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"

# name -> (request arguments, status, code)
Request = dict[str, Any]


def upload(data: bytes, field: str = "image", name: str = "upload.jpg") -> Request:
    return {"files": {field: (name, data, "image/jpeg")}}


BAD_UPLOADS: dict[str, tuple[Callable[[], Request], int, str]] = {
    "no body": (lambda: {}, 422, "validation_error"),
    "empty multipart body": (lambda: {"content": b"", "headers": {
        "content-type": "multipart/form-data; boundary=x"}}, 422, "validation_error"),
    "JSON instead of multipart": (lambda: {"json": {"image": "aGVsbG8="}}, 422, "validation_error"),
    "empty file": (lambda: upload(b""), 400, "empty_file"),
    "wrong field name": (lambda: upload(small_photo(), field="file"), 422, "validation_error"),
    "text": (lambda: upload(b"certainly not a photo\n" * 50), 415, "unsupported_format"),
    "PDF": (lambda: upload(PDF, name="x.pdf"), 415, "unsupported_format"),
    "HTML with a script": (lambda: upload(b"<html><script>alert(1)</script></html>"), 415,
                           "unsupported_format"),
    "truncated JPEG": (lambda: upload(truncated("JPEG")), 400, "corrupt_image"),
    "truncated PNG": (lambda: upload(truncated("PNG")), 400, "corrupt_image"),
    "PNG bomb 60000x60000": (lambda: upload(png_bomb(60_000, 60_000)), 413, "too_many_pixels"),
    "GIF bomb 65535x65535": (lambda: upload(gif_bomb()), 413, "too_many_pixels"),
    "JPEG bomb 65500x65500": (lambda: upload(jpeg_bomb()), 413, "too_many_pixels"),
    "TIFF bomb 60000x60000": (lambda: upload(tiff_bomb()), 413, "too_many_pixels"),
    "BMP bomb 100000x100000": (lambda: upload(bmp_bomb()), 413, "too_many_pixels"),
    "WebP bomb 16384x16384": (lambda: upload(webp_bomb()), 413, "too_many_pixels"),
    "PNG zTXt bomb (32 MB text)": (lambda: upload(png_text_bomb(b"zTXt")), 400, "corrupt_image"),
    "PNG iCCP bomb (32 MB profile)": (lambda: upload(png_text_bomb(b"iCCP")), 400, "corrupt_image"),
    "file over the byte limit": (lambda: upload(b"\xff\xd8\xff" + b"\0" * LIMIT), 413, "file_too_large"),
    "2000 file parts": (lambda: {"files": [("image", ("a.png", b"x", "image/png"))] * 2000}, 400,
                        "bad_request"),
    "1.1 MB text field": (lambda: {**upload(small_photo()), "data": {"preset": "x" * (1100 * 1024)}},
                          400, "bad_request"),
    "body over the route's limit": (lambda: {**upload(small_photo()), "data": {"preset": "x" * (2 * LIMIT)}},
                                    413, "payload_too_large"),
    "unknown preset": (lambda: {**upload(small_photo()), "data": {"preset": "turbo"}}, 422,
                       "validation_error"),
    "eps over the bound": (lambda: {**upload(small_photo()), "data": {"eps": "1.0"}}, 422,
                           "validation_error"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_json_error_and_cost_the_queue_nothing(stack: Stack, case: str) -> None:
    make, status, code = BAD_UPLOADS[case]
    request = make()
    headers = {**client_auth(), **request.pop("headers", {})}
    before = stack.queue_state()
    with stack.api.client() as api:
        response = api.post("/v1/filter", headers=headers, **request)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
        assert api.get("/healthz").status_code == 200  # the process is still serving
    assert stack.queue_state() == before


# ------------------------------------------------- over-size bodies, streamed
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_over_the_limit_is_cut_off_while_it_streams(stack: Stack, chunked: bool) -> None:
    """64 MB sent at a 1 MB limit over a real socket: the answer is a JSON 413
    long before the end (a declared length is refused before reading the body;
    a chunked body at most the limit plus socket buffers later), and the API
    keeps serving."""
    total = 64 * LIMIT
    before = stack.queue_state()
    sent, status, body = stream_upload(stack.api.port, "/v1/filter", "image", client_auth(), total,
                                       chunked=chunked)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert sent < total // 4, f"sent {sent} of {total} bytes before the refusal"
    if not chunked:
        assert sent == 0
    assert stack.queue_state() == before
    assert httpx.get(f"{stack.api.url}/healthz").status_code == 200


# ------------------------------------------- valid oddities, through a worker
def _photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.open(io.BytesIO(small_photo(size=size))).convert("RGB")


def _corrupt_exif() -> bytes:
    clean = _encode(_photo(), "JPEG")
    junk = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\x7f" + b"\x13\x37" * 50
    return clean[:2] + b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk + clean[2:]


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    return _encode(_photo(), "JPEG", exif=exif)


def _animated(fmt: str) -> bytes:
    frames = [_photo(), _photo().rotate(180)]
    if fmt == "GIF":
        frames = [f.quantize(64) for f in frames]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80)


def _with_alpha() -> Image.Image:
    image = _photo().convert("RGBA")
    image.putalpha(180)
    return image


VALID_ODDITIES: dict[str, tuple[Callable[[], bytes], tuple[int, int], str]] = {
    "16-bit gray PNG": (lambda: png_16bit([[i * 1000 for i in range(64)]] * 48, 0), (64, 48), "L"),
    "16-bit RGBA PNG": (lambda: png_16bit([[[i * 900, 30000, 65535 - i * 900, 40000] for i in range(40)]] * 30, 6),
                        (40, 30), "RGBA"),
    "CMYK JPEG": (lambda: _encode(_photo().convert("CMYK"), "JPEG"), (64, 48), "RGB"),
    "palette PNG": (lambda: _encode(_photo().quantize(16), "PNG"), (64, 48), "RGB"),
    "palette PNG with transparency": (lambda: _encode(_photo().quantize(16), "PNG", transparency=0),
                                      (64, 48), "RGBA"),
    "animated GIF": (lambda: _animated("GIF"), (64, 48), "RGB"),
    "animated WebP": (lambda: _animated("WEBP"), (64, 48), "RGB"),
    "corrupt EXIF": (_corrupt_exif, (64, 48), "RGB"),
    "EXIF orientation": (_exif_rotated, (48, 64), "RGB"),
    "ICC profile": (lambda: _encode(_photo(), "JPEG", icc_profile=swapped_primaries_icc()), (64, 48), "RGB"),
    "RGBA WebP": (lambda: _encode(_with_alpha(), "WEBP", lossless=True), (64, 48), "RGBA"),
    "grayscale TIFF": (lambda: _encode(_photo().convert("L"), "TIFF"), (64, 48), "L"),
}


@pytest.mark.parametrize("kind", sorted(VALID_ODDITIES))
def test_unusual_but_valid_images_are_filtered_by_the_worker(stack: Stack, kind: str) -> None:
    make, size, mode = VALID_ODDITIES[kind]
    with stack.api.client() as api:
        response = api.post("/v1/filter", headers=client_auth(), data={"preset": "fast", "wait": "30"},
                            files={"image": ("upload", make(), "application/octet-stream")})
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "finished", job
        assert job["result"]["image"] == {"width": size[0], "height": size[1], "mode": mode}
        image = api.get(f"/v1/jobs/{job['job_id']}/image", headers=client_auth())
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(image.content))
    assert out.format == "PNG" and out.size == size and out.mode == mode
