"""How many pixels an image inside a string input would decode to, read from its header only.

The server never decodes images, but models do: the demo ResNet runs ``tf.io.decode_jpeg`` /
``decode_image`` in its graph on a DT_STRING input (REST sends ``{"b64": ...}``). A few hundred
bytes of crafted header declaring 8000 x 8000 make the decoder allocate ~190 MB, and glibc keeps
much of it afterwards (issue #10). :func:`check_image_inputs` reads the header of every string
element that starts like a JPEG, PNG, GIF, BMP or WebP file (never the pixel data) and refuses the
request when one would decode to more than ``--max_image_pixels`` (a tfstack flag, not upstream's)
pixels; an animated GIF or WebP counts the pixels of all its frames. Strings that are not images,
and images whose header cannot be read (the decoder refuses those itself), pass untouched.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserver.errors import invalid_argument, shown
from modelserver.flags import Flags

DEFAULT_MAX_IMAGE_PIXELS: int = Flags.max_image_pixels
"""50 megapixels (e.g. 8660 x 5773, ~150 MB decoded as RGB): above any camera photo a client
sends for inference, below the 64 MP of an 8000 x 8000 bomb."""
MAX_HEADER_STEPS = 1 << 20
"""Segments, blocks or chunks read per request before a header is refused as unreadable: a real
file has a few dozen before its size (JPEG, WebP) or 255-byte blocks (GIF: 1M steps is 255 MB,
more than a request body may hold), so only a crafted file reaches it."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman/arithmetic).
# All of 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
# The next marker as libjpeg finds it: skip any bytes, then 0xFF fill, then a code (0x00 is a
# stuffed byte inside entropy data, not a marker).
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
# First bytes of the formats read here: anything else is not looked at further.
_FIRST_BYTES = frozenset(b"\xff\x89GBR")


class HeaderTooComplex(ValueError):
    """A header that needs more than :data:`MAX_HEADER_STEPS` steps to read."""


@dataclass(frozen=True)
class ImageSize:
    """What an image header declares; ``frames`` > 1 for animations."""

    kind: str
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames

    def describe(self) -> str:
        size = f"{self.kind} image of {self.width}x{self.height}"
        if self.frames > 1:
            return f"{size} in {self.frames} frames"
        return size


class _Budget:
    """Steps left for reading the headers of one request."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def spend(self, kind: str) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise HeaderTooComplex(
                f"its {kind} header needs more than {MAX_HEADER_STEPS} segments or blocks to read"
            )


def image_size(data: bytes, budget: _Budget | None = None) -> ImageSize | None:
    """The size ``data`` declares when it starts like a JPEG, PNG, GIF, BMP or WebP file; None
    for anything else or a header too short or malformed to read (a decoder refuses those)."""
    steps = budget if budget is not None else _Budget(MAX_HEADER_STEPS)
    if data[:2] == b"\xff\xd8":
        return _jpeg(data, steps)
    if data[:8] == PNG_SIGNATURE:
        return _png(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data, steps)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data, steps)
    return None


def _jpeg(data: bytes, budget: _Budget) -> ImageSize | None:
    pos = 2
    while True:
        budget.spend("JPEG")
        match = _JPEG_MARKER.search(data, pos)
        if match is None:
            return None
        code = match.group(1)[0]
        pos = match.end()
        if code in _JPEG_STANDALONE:
            continue
        if code in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        if code in _JPEG_SOF:
            if pos + 7 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, pos + 3)
            return ImageSize("JPEG", width, height)
        if pos + 2 > len(data):
            return None
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            return None
        pos += length


def _png(data: bytes) -> ImageSize | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return ImageSize("PNG", width, height)


def _gif(data: bytes, budget: _Budget) -> ImageSize | None:
    if len(data) < 13:
        return None
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while pos < len(data):
        budget.spend("GIF")
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then data sub-blocks
            pos = _skip_sub_blocks(data, pos + 2, budget)
        elif block == 0x2C:  # image descriptor (+ local colour table), LZW size, sub-blocks
            if pos + 10 > len(data):
                break
            frames += 1
            packed = data[pos + 9]
            pos += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1, budget)
        else:
            break  # corrupt: the decoder stops (or fails) here too
    return ImageSize("GIF", width, height, max(frames, 1))


def _skip_sub_blocks(data: bytes, pos: int, budget: _Budget) -> int:
    while pos < len(data):
        budget.spend("GIF")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


# DIB header sizes: OS/2 core, BITMAPINFOHEADER, V2, V3, OS/2 2.x, V4, V5.
_BMP_HEADERS = frozenset({12, 40, 52, 56, 64, 108, 124})


def _bmp(data: bytes) -> ImageSize | None:
    # "BM" also starts text ("BMW"): a bitmap has zero reserved bytes and a known header size.
    if len(data) < 26 or data[6:10] != b"\x00\x00\x00\x00":
        return None
    (header,) = struct.unpack_from("<I", data, 14)
    if header not in _BMP_HEADERS:
        return None
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return ImageSize("BMP", abs(width), abs(height))


def _webp(data: bytes, budget: _Budget) -> ImageSize | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        frames = _webp_frames(data, budget) if data[20] & 0x02 else 1
        return ImageSize("WebP", width, height, max(frames, 1))
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageSize("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return ImageSize("WebP", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    return None


def _webp_frames(data: bytes, budget: _Budget) -> int:
    """ANMF chunks of an animated WebP (RIFF chunks: four-byte id, size, data padded to even)."""
    frames = 0
    pos = 12
    while pos + 8 <= len(data):
        budget.spend("WebP")
        if data[pos : pos + 4] == b"ANMF":
            frames += 1
        (size,) = struct.unpack_from("<I", data, pos + 4)
        pos += 8 + size + (size & 1)
    return frames


def _strings(value: Any) -> Iterable[Any]:
    if isinstance(value, np.ndarray):
        return value.flat if value.dtype.kind in "OS" else ()
    if isinstance(value, bytes):
        return (value,)
    if isinstance(value, list):
        return value  # in-process callers
    return ()


def check_image_inputs(inputs: Mapping[str, Any], max_pixels: int) -> None:
    """Refuse (INVALID_ARGUMENT) a request whose string inputs hold an image that would decode to
    more than ``max_pixels`` pixels, or whose image header is too complex to read; ``max_pixels``
    0 turns the check off. Only headers are read."""
    if max_pixels <= 0:
        return
    budget = _Budget(MAX_HEADER_STEPS)
    for alias, value in inputs.items():
        for index, item in enumerate(_strings(value)):
            if not isinstance(item, bytes) or not item or item[0] not in _FIRST_BYTES:
                continue
            try:
                size = image_size(item, budget)
            except HeaderTooComplex as exc:
                raise invalid_argument(
                    f"Input {shown(alias)} element {index} looks like an image but {exc}; "
                    "send a well-formed image file"
                ) from None
            if size is not None and size.pixels > max_pixels:
                raise invalid_argument(
                    f"Input {shown(alias)} element {index} is a {size.describe()} pixels: "
                    f"{size.pixels} pixels to decode, more than the limit of {max_pixels} "
                    "(--max_image_pixels); send a smaller image (resize it before sending) "
                    "or start the server with a larger --max_image_pixels (0 = no limit)"
                )
