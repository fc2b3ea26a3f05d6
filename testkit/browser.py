"""Headless Chromium (Debian's `chromium`, `make chromium` installs it) for the tests of web
pages: the DOM it built from a page (`--dump-dom`), a screenshot, and a PNG read by hand
(no imaging library) to tell a real render from a blank one."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


def _chromium(args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--hide-scrollbars",
         *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


async def dump_dom(url: str, profile: Path, timeout: float = 60.0) -> str:
    """The DOM Chromium built from the page (`--dump-dom`)."""
    done = await asyncio.to_thread(_chromium, ["--dump-dom", url], profile, timeout)
    assert done.returncode == 0, f"chromium --dump-dom failed ({done.returncode}): {done.stderr}"
    return done.stdout


async def screenshot(url: str, png: Path, profile: Path, timeout: float = 60.0) -> Path:
    done = await asyncio.to_thread(
        _chromium, [f"--screenshot={png}", "--window-size=1400,900", url], profile, timeout
    )
    exists = await asyncio.to_thread(png.exists)
    assert done.returncode == 0 and exists, (
        f"chromium --screenshot failed ({done.returncode}): {done.stderr}"
    )
    return png


@dataclass(frozen=True, slots=True)
class PngImage:
    width: int
    height: int
    colors: int  # distinct pixel values counted (up to a cap)
    dark_fraction: float  # of pixels darker than mid-grey (text, lines, badges)


def read_png(path: Path, color_cap: int = 5000) -> PngImage:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) by hand."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    offset, header = 8, b""
    chunks: list[bytes] = []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, color_type, _c, _f, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color_type in (2, 6) and interlace == 0, (depth, color_type, interlace)
    channels = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    colors: set[bytes] = set()
    dark = 0
    position = 0
    for _ in range(height):
        line = bytearray(raw[position + 1:position + 1 + stride])
        _unfilter(raw[position], line, previous, channels)
        position += 1 + stride
        for x in range(0, stride, channels * 3):  # every third pixel: enough to judge
            pixel = bytes(line[x:x + 3])
            if len(colors) < color_cap:
                colors.add(pixel)
            if sum(pixel) < 3 * 128:
                dark += 1
        previous = line
    sampled = height * len(range(0, stride, channels * 3))
    return PngImage(width, height, len(colors), dark / sampled)


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            corner = previous[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + predictor) & 0xFF
