"""Issue 7, item 1 over HTTP: bad uploads get a clear JSON error and cost no
worker time (nothing reaches the queue); unusual but valid images are accepted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from PIL import Image
from service_testkit import (
    client_auth,
    decode_png,
    encode,
    photo,
    photo_bytes,
    png_16bit,
    png_bomb,
    swapped_primaries_icc,
)

# Pillow warns about the broken EXIF blocks these tests send on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data")


def post_image(client, data: bytes, field: str = "image"):
    return client.post("/v1/filter", files={field: ("upload.bin", data, "image/jpeg")},
                       headers=client_auth())


def assert_error(response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


def test_empty_request_body(client, backend):
    assert_error(client.post("/v1/filter", headers=client_auth()), 422, "validation_error")
    assert_error(client.post("/v1/filter", content=b"", headers={**client_auth(),
                 "content-type": "multipart/form-data; boundary=x"}), 422)
    assert not backend.requests


def test_empty_file(client, backend):
    assert_error(post_image(client, b""), 400, "empty_file")
    assert not backend.requests


def test_wrong_field_name(client, backend):
    response = post_image(client, photo_bytes(), field="file")
    assert_error(response, 422, "validation_error")
    assert "image" in response.json()["error"]["message"]
    assert not backend.requests


def test_json_instead_of_multipart(client):
    assert_error(client.post("/v1/filter", json={"image": "aGVsbG8="}, headers=client_auth()), 422)


@pytest.mark.parametrize("data", [
    b"just some text, surely not a photo\n" * 20,
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n%%EOF\n",
    b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>",
])
def test_text_pdf_svg_are_415(client, backend, data):
    assert_error(post_image(client, data), 415, "unsupported_format")
    assert not backend.requests


@pytest.mark.parametrize("name", ["chelsea.jpg", "astronaut.png"])
def test_truncated_files_are_400(client, backend, name):
    data = photo_bytes(name)
    assert_error(post_image(client, data[: len(data) * 2 // 3]), 400, "corrupt_image")
    assert not backend.requests


def test_decompression_bomb_is_413(client, backend):
    assert_error(post_image(client, png_bomb(60_000, 60_000)), 413, "too_many_pixels")
    assert not backend.requests


def test_file_over_the_byte_limit_is_413(client, backend, settings):
    too_big = b"\xff\xd8\xff" + b"\x00" * settings.max_upload_bytes
    assert_error(post_image(client, too_big), 413)
    assert not backend.requests


async def asgi_post(app, path: str, headers: dict[str, str], chunks: Iterator[bytes]):
    """Drive the ASGI app directly with a streamed body (TestClient would read
    the whole body before the app sees it).  Returns (chunks read, status, body)."""
    read = 0

    async def receive() -> dict:
        nonlocal read
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return read, sent[0]["status"], json.loads(body)


@pytest.mark.parametrize("declare_length", [False, True])
def test_over_size_body_is_refused_while_streaming(client, backend, settings, declare_length):
    """A body 20x the limit: the server stops reading soon after the limit (or
    before reading at all when Content-Length says it is too big), rather
    than swallowing everything and refusing afterwards."""
    chunk = b"\x00" * 65536
    total_chunks = 20 * settings.max_upload_bytes // len(chunk)
    head = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff")
    headers = {**client_auth(), "content-type": "multipart/form-data; boundary=b"}
    if declare_length:
        headers["content-length"] = str(len(head) + total_chunks * len(chunk))
    chunks = iter([head] + [chunk] * total_chunks)
    read, status, body = asyncio.run(asgi_post(client.app, "/v1/filter", headers, chunks))
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    limit_chunks = settings.max_upload_bytes // len(chunk)
    assert read <= (0 if declare_length else limit_chunks + 6), f"read {read} of {total_chunks}"
    assert not backend.requests


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return encode(photo(), "JPEG", exif=exif)


def _corrupt_exif() -> bytes:
    clean = photo_bytes()
    junk = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\x7f" + b"\x13\x37" * 50
    return clean[:2] + b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk + clean[2:]


def _animated_gif() -> bytes:
    frames = [photo().quantize(64), photo().rotate(180).quantize(64)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80)


def _translucent() -> Image.Image:
    image = photo("astronaut.png").convert("RGBA")
    image.putalpha(200)  # an all-opaque alpha channel may be dropped by encoders
    return image


VALID_ODDITIES = {
    "16-bit gray PNG": (lambda: png_16bit([[i * 257 for i in range(64)]] * 48, 0), (64, 48), "L"),
    "16-bit RGB PNG": (lambda: png_16bit([[[i * 257, 0, 65535 - i * 257] for i in range(40)]] * 30, 2),
                       (40, 30), "RGB"),
    "CMYK JPEG": (lambda: encode(photo().convert("CMYK"), "JPEG"), (451, 300), "RGB"),
    "palette PNG": (lambda: encode(photo().quantize(32), "PNG"), (451, 300), "RGB"),
    "palette PNG with transparency": (
        lambda: encode(photo().quantize(32), "PNG", transparency=0), (451, 300), "RGBA"),
    "animated GIF": (_animated_gif, (451, 300), "RGB"),
    "corrupt EXIF": (_corrupt_exif, (451, 300), "RGB"),
    "EXIF rotation": (_exif_rotated, (300, 451), "RGB"),
    "ICC profile": (lambda: encode(photo(), "JPEG", icc_profile=swapped_primaries_icc()), (451, 300), "RGB"),
    "grayscale JPEG": (lambda: encode(photo().convert("L"), "JPEG"), (451, 300), "L"),
    "RGBA WebP": (lambda: encode(_translucent(), "WEBP", lossless=True), (384, 384), "RGBA"),
    "gray+alpha PNG": (lambda: encode(photo().convert("LA"), "PNG"), (451, 300), "LA"),
    "BMP": (lambda: encode(photo(), "BMP"), (451, 300), "RGB"),
    "TIFF": (lambda: encode(photo(), "TIFF", compression="tiff_lzw"), (451, 300), "RGB"),
}


@pytest.mark.parametrize("kind", sorted(VALID_ODDITIES))
def test_valid_but_unusual_images_are_accepted(client, backend, kind):
    make, size, mode = VALID_ODDITIES[kind]
    response = post_image(client, make())
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    queued = decode_png(backend.uploads[job_id])
    assert (queued.size, queued.mode) == (size, mode)
    assert backend.requests[job_id]["image"]["mode"] == mode


def test_rejections_are_counted_by_reason(client):
    post_image(client, b"plain text")
    post_image(client, png_bomb(60_000, 60_000))
    metrics = client.get("/metrics").text
    assert 'safespot_uploads_rejected_total{reason="unsupported_format"} 1.0' in metrics
    assert 'safespot_uploads_rejected_total{reason="too_many_pixels"} 1.0' in metrics
