"""Image sizes read from the header, before anything is decoded (issue 13: one crafted JPEG header can make a
decoder allocate gigabytes).

`jpeg_size(data)` walks the JPEG markers to the frame header (SOF) and returns its width and height without
decoding a pixel; `image_size` does the same for PNG (IHDR); `check_jpeg` / `check_image` refuse an image over
a pixel budget with `ImageTooLarge` ("image too large: 30000×30000 pixels, at most 50,000,000"), and anything
that is not such an image with `NotAnImage`.

Budgets: a photo from a phone (up to 50 MP: 8160×6120 sensors), a camera frame or a detector's reference image
(16.8 MP: 4096×4096, room for 4K and 12 MP cameras; frames are also at most 2 MiB, CONTRACT §1).

OpenCV's own cap: importing this module sets `OPENCV_IO_MAX_IMAGE_PIXELS` (unless already set) to the largest
budget, so that a decoder reached by any other path still refuses more. OpenCV reads the variable once, when
`cv2` is loaded, so this module must be imported before `cv2`: `gridhub.api` and `gridhub.detectors` import it
in their `__init__` (every module of theirs is imported after its package), and `opencv_cap_applied()` says
whether it was in time.
"""

from __future__ import annotations

import os
import sys

__all__ = ["FRAME_MAX_PIXELS", "OPENCV_MAX_PIXELS", "PHOTO_MAX_PIXELS", "REFERENCE_MAX_PIXELS", "ImageRefused",
           "ImageTooLarge", "NotAnImage", "check_image", "check_jpeg", "image_size", "jpeg_size",
           "opencv_cap_applied"]

PHOTO_MAX_PIXELS = 50_000_000
FRAME_MAX_PIXELS = 4096 * 4096
REFERENCE_MAX_PIXELS = FRAME_MAX_PIXELS
OPENCV_MAX_PIXELS = max(PHOTO_MAX_PIXELS, FRAME_MAX_PIXELS, REFERENCE_MAX_PIXELS)

_CV_LOADED_FIRST = "cv2" in sys.modules
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OPENCV_MAX_PIXELS))

# Start-of-frame markers (baseline, extended, progressive, lossless, their arithmetic and differential kinds).
# DHT (C4), JPG (C8) and DAC (CC) share the range but are not frame headers.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageRefused(ValueError):
    """An image refused before decoding; the message says why."""


class NotAnImage(ImageRefused):
    """Not a JPEG (or PNG) whose size can be read from its header."""


class ImageTooLarge(ImageRefused):
    """More pixels than the budget; `width` and `height` are the header's."""

    def __init__(self, width: int, height: int, max_pixels: int) -> None:
        self.width, self.height, self.max_pixels = width, height, max_pixels
        super().__init__(f"image too large: {width}×{height} pixels, at most {max_pixels:,}")


def opencv_cap_applied() -> bool:
    """True when OpenCV was loaded after this module set its pixel cap (so the cap is in force)."""
    return not _CV_LOADED_FIRST


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's first frame header, reading markers only (no pixel is decoded).

    The decoder uses the first SOF too (a second one before the scan is an error to libjpeg). Anything that is not
    a well-formed marker sequence up to that SOF is `NotAnImage`: a decoder that would skip the garbage never sees
    bytes this function has not measured."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise NotAnImage("not a JPEG: it does not start with the SOI marker (FF D8)")
    i = 2
    while i < n:
        if data[i] != 0xFF:
            raise NotAnImage(f"not a JPEG: no marker at byte {i} before the frame header")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0x00, 0xD8, 0xD9, 0xDA):
            raise NotAnImage(f"not a JPEG: marker FF {marker:02X} at byte {i - 2} before any frame header (SOF)")
        if i + 2 > n:
            break
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            raise NotAnImage(f"not a JPEG: segment FF {marker:02X} at byte {i - 2} has a length of {length}")
        if marker in _SOF:
            if length < 8 or i + 7 > n:
                break
            height = int.from_bytes(data[i + 3:i + 5], "big")
            width = int.from_bytes(data[i + 5:i + 7], "big")
            if width == 0 or height == 0:
                raise NotAnImage(f"JPEG frame header gives {width}×{height} pixels (a height set later by DNL is "
                                 "not supported)")
            return width, height
        i += length
    raise NotAnImage("not a JPEG: it ends before its frame header (SOF)")


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG or PNG from its header; `NotAnImage` for anything else."""
    if data[:2] == b"\xff\xd8":
        return jpeg_size(data)
    if data[:8] == _PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise NotAnImage("not a PNG: no IHDR header after the signature")
        width = int.from_bytes(data[16:20], "big")
        height = int.from_bytes(data[20:24], "big")
        if width == 0 or height == 0:
            raise NotAnImage(f"PNG header gives {width}×{height} pixels")
        return width, height
    raise NotAnImage("not a JPEG or PNG image")


def _within(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLarge(width, height, max_pixels)
    return size


def check_jpeg(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The JPEG's (width, height) if it has at most `max_pixels`; else `ImageTooLarge`, `NotAnImage` if no JPEG."""
    return _within(jpeg_size(data), max_pixels)


def check_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """`check_jpeg` for a JPEG or a PNG."""
    return _within(image_size(data), max_pixels)
