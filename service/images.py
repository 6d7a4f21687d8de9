"""Upload intake: turn the bytes a user sent into a normalised lossless PNG.

Pillow only (no numpy, no torch).  The steps, in order, and why:

1. identify the format among JPEG, PNG, WebP, GIF, BMP, TIFF only: Pillow
   knows dozens of formats (some with large, rarely audited decoders); a
   public upload path needs six (anything else: 415);
2. read the size from the header and refuse more than `max_pixels` BEFORE
   decoding (`Image.open` is lazy): a 50 KB PNG can decode to gigapixels (413);
3. decode the first frame (animations: the frame a viewer shows first);
   truncated or corrupt data is a 400 with Pillow's reason;
4. apply the EXIF orientation, so the pixels are what a viewer sees; a corrupt
   EXIF block is ignored rather than refused (cameras write broken ones);
5. convert an embedded ICC profile to sRGB: the classifier was trained on sRGB;
6. normalise the pixel format to L, LA, RGB or RGBA (grayscale stays gray,
   alpha is kept, 16-bit is scaled to 8-bit, CMYK and palettes become RGB/RGBA);
7. encode a PNG without metadata (the profile is now sRGB; EXIF was applied).

`decode_upload` is blocking CPU work: callers run it in a threadpool.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from service.errors import BadImage, PayloadTooLarge, UnsupportedMediaType
from worker.protocol import ErrorCode, ImageInfo

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_ALIASES = {"MPO": "JPEG"}  # phones write multi-picture JPEGs; frame 0 is the photo
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 is ~5x faster than the default 6


@dataclass(frozen=True)
class DecodedUpload:
    """A normalised upload: lossless PNG bytes plus what the worker needs to know."""

    png: bytes
    info: ImageInfo


def decode_upload(data: bytes, *, max_pixels: int) -> DecodedUpload:
    """Validate and normalise one uploaded image (see the module docstring).

    Raises BadImage (400), PayloadTooLarge (413, too many pixels) or
    UnsupportedMediaType (415); never another exception for any input bytes.
    """
    if not data:
        raise BadImage("the uploaded file is empty", code=ErrorCode.EMPTY_FILE)
    # Pillow also guards against bombs (Image.MAX_IMAGE_PIXELS, set by create_app),
    # but with a warning at that size and an error only at twice it; our own check
    # below is the one that answers.  ImageFile.LOAD_TRUNCATED_IMAGES stays False.
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        if _has_accepted_signature(data):  # e.g. a PNG whose header CRC is wrong
            raise BadImage("the image header is corrupt", code=ErrorCode.CORRUPT_IMAGE) from None
        raise UnsupportedMediaType(
            f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})",
            code=ErrorCode.UNSUPPORTED_FORMAT) from None
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"the image has more pixels than the limit of {max_pixels}",
                              code=ErrorCode.TOO_MANY_PIXELS) from None
    except Exception as e:  # a known signature with a broken header (OSError, SyntaxError, ...)
        raise BadImage(f"the image header is corrupt: {e}", code=ErrorCode.CORRUPT_IMAGE) from None

    with image:
        fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "unknown")
        width, height = image.size
        if width < 1 or height < 1:
            raise BadImage("the image has no pixels", code=ErrorCode.CORRUPT_IMAGE)
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"the image has {width}x{height} = {width * height} pixels; "
                f"the limit is {max_pixels}", code=ErrorCode.TOO_MANY_PIXELS)
        try:
            image.seek(0)  # first frame of an animation
            image.load()
            frame = _normalise(image)
        except (BadImage, UnsupportedMediaType, PayloadTooLarge):
            raise
        except (Image.DecompressionBombError, MemoryError):
            raise PayloadTooLarge("the image is too large to decode", code=ErrorCode.TOO_MANY_PIXELS) from None
        except Exception as e:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
            raise BadImage(f"the image data is truncated or corrupt: {e}", code=ErrorCode.CORRUPT_IMAGE) from None
        frame.info = {}  # no EXIF, text or profile: the pixels are now plain sRGB
        out = io.BytesIO()  # encode before `with` closes the file (frame may be `image`)
        frame.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    info = ImageInfo(width=frame.width, height=frame.height, mode=frame.mode, format=fmt,
                     bytes=len(data))
    return DecodedUpload(png=out.getvalue(), info=info)


def _has_accepted_signature(data: bytes) -> bool:
    head = data[:16]
    return (head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
                             b"II*\x00", b"MM\x00*"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


def _normalise(image: Image.Image) -> Image.Image:
    """Orientation, colour profile and pixel format; returns an L/LA/RGB/RGBA image."""
    icc = image.info.get("icc_profile")
    frame = _exif_transposed(image)
    frame = _to_8bit_mode(frame, has_icc=bool(icc))
    if icc:
        frame = _to_srgb(frame, icc)
    return _to_output_mode(frame)


def _exif_transposed(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # corrupt EXIF: keep the pixels as stored
        return image


def _to_8bit_mode(image: Image.Image, *, has_icc: bool) -> Image.Image:
    """Bring every decoder output to a mode ImageCms and PNG handle."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        # Image.convert("L") clips 16-bit values at 255; scale to 8 bits instead.
        return image.convert("I").point(lambda v: v / 256).convert("L")
    if mode == "F":
        raise UnsupportedMediaType("floating-point images are not supported",
                                   code=ErrorCode.UNSUPPORTED_PIXEL_FORMAT)
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in ("PA", "RGBa"):
        return image.convert("RGBA")
    if mode == "La":
        return image.convert("LA")
    if mode in ("L", "RGB") and "transparency" in image.info:  # a tRNS colour key is alpha too
        return image.convert(mode + "A" if mode == "L" else "RGBA")
    if mode == "CMYK" and not has_icc:
        return image.convert("RGB")  # no profile: Pillow's naive CMYK -> RGB
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    return image.convert("RGB")  # YCbCr, LAB, HSV, RGBX, I;16 variants of colour TIFFs ...


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """Convert colour images with an embedded profile to sRGB.

    Gray images keep their values: the profile of a gray image only bends its
    tone curve, and turning it into RGB would break "grayscale stays gray".
    A profile lcms cannot parse is ignored (the pixels are kept as sRGB-ish)."""
    if image.mode in ("L", "LA"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = source.profile.xcolor_space.strip()
        if image.mode == "CMYK" and space == "CMYK":
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")  # type: ignore[return-value]
        if image.mode in ("RGB", "RGBA") and space == "RGB":
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode=image.mode)  # type: ignore[return-value]
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        pass
    return image.convert("RGB") if image.mode == "CMYK" else image


def _to_output_mode(image: Image.Image) -> Image.Image:
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")
