"""service.images: every kind of file users send, decoded or refused clearly."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from service_testkit import (
    decode_png,
    encode,
    photo,
    photo_bytes,
    png_16bit,
    png_bomb,
    swapped_primaries_icc,
)

from service.errors import BadImage, PayloadTooLarge, UnsupportedMediaType
from service.images import decode_upload

LIMIT = 4_000_000
# Pillow warns about the broken EXIF blocks these tests send on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data")


def decode(data: bytes, max_pixels: int = LIMIT):
    return decode_upload(data, max_pixels=max_pixels)


@pytest.mark.parametrize(("name", "size", "fmt"), [
    ("chelsea.jpg", (451, 300), "JPEG"), ("astronaut.png", (384, 384), "PNG"),
    ("coffee.webp", None, "WEBP"),
])
def test_real_photos_become_lossless_png_of_the_same_size(name, size, fmt):
    data = photo_bytes(name)
    decoded = decode(data)
    out = decode_png(decoded.png)
    original = photo(name)
    assert out.size == original.size == (size or original.size)
    assert decoded.info == {"width": out.width, "height": out.height, "mode": "RGB",
                            "format": fmt, "bytes": len(data)}
    assert out.tobytes() == original.convert("RGB").tobytes()  # lossless: same pixels


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "WEBP", "PNG", "JPEG"])
def test_every_accepted_format_decodes(fmt):
    image = photo().resize((160, 120))
    params = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode(encode(image, fmt, **params))
    assert decoded.info["format"] == fmt
    assert (decoded.info["width"], decoded.info["height"]) == (160, 120)


def test_empty_file_is_a_400():
    with pytest.raises(BadImage, match="empty") as e:
        decode(b"")
    assert e.value.status == 400 and e.value.code == "empty_file"


@pytest.mark.parametrize("data", [
    b"hello, this is plain text and not an image\n" * 10,
    b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n",
    b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
    b"\x00" * 1000,
])
def test_non_images_are_415(data):
    with pytest.raises(UnsupportedMediaType) as e:
        decode(data)
    assert e.value.status == 415


def test_formats_outside_the_list_are_415_even_if_pillow_reads_them():
    with pytest.raises(UnsupportedMediaType):
        decode(encode(Image.new("RGB", (8, 8)), "ICO"))


@pytest.mark.parametrize(("name", "keep"), [("chelsea.jpg", 0.5), ("astronaut.png", 0.5),
                                           ("astronaut.png", 0.999)])
def test_truncated_files_are_400(name, keep):
    data = photo_bytes(name)
    with pytest.raises(BadImage) as e:
        decode(data[: int(len(data) * keep)])
    assert e.value.status == 400 and "truncated or corrupt" in e.value.message


def test_corrupt_header_is_400():
    data = bytearray(encode(Image.new("RGB", (16, 16)), "PNG"))
    data[16:24] = b"\xff" * 8  # width/height in IHDR, CRC now wrong
    with pytest.raises((BadImage, PayloadTooLarge)):
        decode(bytes(data))


def test_decompression_bomb_is_refused_from_the_header_alone():
    bomb = png_bomb(100_000, 100_000)  # 10 gigapixels in 83 bytes
    assert len(bomb) < 200
    with pytest.raises(PayloadTooLarge) as e:
        decode(bomb)
    assert e.value.status == 413 and e.value.code == "too_many_pixels"


def test_pixel_limit_applies_to_ordinary_images_too():
    data = encode(Image.new("RGB", (300, 200)), "PNG")
    assert decode(data, max_pixels=60_000).info["width"] == 300
    with pytest.raises(PayloadTooLarge):
        decode(data, max_pixels=59_999)


def test_16bit_gray_is_scaled_not_clipped():
    decoded = decode(png_16bit([[0, 256, 32768, 65535]], color_type=0))
    out = decode_png(decoded.png)
    assert out.mode == "L"
    assert [out.getpixel((x, 0)) for x in range(4)] == [0, 1, 128, 255]


def test_16bit_colour_with_alpha_keeps_alpha():
    out = decode_png(decode(png_16bit([[[65535, 0, 32768, 4096]]], color_type=6)).png)
    assert out.mode == "RGBA" and out.getpixel((0, 0)) == (255, 0, 128, 16)


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # pure red ink
    for fmt in ("JPEG", "TIFF"):
        out = decode_png(decode(encode(cmyk, fmt)).png)
        assert out.mode == "RGB" and out.size == (64, 48)
        r, g, b = out.getpixel((10, 10))
        assert r > 200 and g < 60 and b < 60


def test_palette_with_transparency_becomes_rgba_and_without_rgb():
    base = photo().resize((90, 60)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    assert decode_png(decode(encode(base, "PNG")).png).mode == "RGB"
    base.info["transparency"] = 0
    out = decode_png(decode(encode(base, "PNG", transparency=0)).png)
    assert out.mode == "RGBA" and out.getextrema()[3][0] == 0


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode_png(decode(data).png)
    assert out.getpixel((5, 5))[:3] == (255, 0, 0)


def test_animated_webp_gives_its_first_frame():
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((250, 0, 0), (0, 250, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert decode_png(decode(data).png).getpixel((5, 5))[:3] == (250, 0, 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 10))  # a white mark top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_png(decode(encode(image, "JPEG", exif=exif, quality=95)).png)
    assert out.size == (40, 80)
    assert out.getpixel((35, 5))[0] > 200  # the mark is now top-right


def test_corrupt_exif_does_not_crash():
    clean = encode(photo(), "JPEG", quality=90)
    garbage = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\xde\xad\xbe\xef" * 40
    segment = b"\xff\xe1" + (len(garbage) + 2).to_bytes(2, "big") + garbage
    data = clean[:2] + segment + clean[2:]  # APP1 right after SOI
    out = decode_png(decode(data).png)
    assert out.size == (451, 300)


def test_icc_profile_is_converted_to_srgb():
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    for fmt in ("PNG", "JPEG"):
        out = decode_png(decode(encode(image, fmt, icc_profile=swapped_primaries_icc())).png)
        r, g, _ = out.getpixel((4, 4))
        assert g > 150 and r < 80, "the profile says this 'red' channel is sRGB green"
        assert "icc_profile" not in out.info


def test_grayscale_stays_grayscale_and_alpha_is_kept():
    gray = photo().convert("L")
    assert decode_png(decode(encode(gray, "JPEG")).png).mode == "L"
    assert decode_png(decode(encode(gray.convert("LA"), "PNG")).png).mode == "LA"
    rgba = photo("astronaut.png").convert("RGBA")
    rgba.putalpha(128)
    out = decode_png(decode(encode(rgba, "PNG")).png)
    assert out.mode == "RGBA" and out.getextrema()[3] == (128, 128)
    assert decode_png(decode(encode(Image.new("1", (20, 20), 1), "BMP")).png).mode == "L"


def test_output_carries_no_metadata():
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"
    out = decode_png(decode(encode(photo(), "JPEG", exif=exif)).png)
    assert not out.getexif() and "exif" not in out.info


def test_mpo_is_reported_as_jpeg():
    data = encode(photo(), "MPO", save_all=True, append_images=[photo()])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert decode(data).info["format"] == "JPEG"


def test_colour_key_transparency_becomes_alpha():
    image = Image.new("RGB", (20, 10), (10, 20, 30))
    image.paste((1, 2, 3), (0, 0, 5, 5))
    out = decode_png(decode(encode(image, "PNG", transparency=(1, 2, 3))).png)
    assert out.mode == "RGBA" and out.getpixel((1, 1))[3] == 0 and out.getpixel((9, 9))[3] == 255
