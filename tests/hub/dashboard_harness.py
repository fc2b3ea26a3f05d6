"""What the dashboard and metrics tests add to `tests.hub.harness`: agents with their own ids,
a hub with `[status]` and `[dashboard]` on a free port, HTTP reads of it, headless Chromium,
and a PNG check that needs no imaging library (zlib and the PNG chunk layout)."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from testkit.broker import MosquittoBroker
from tests.hub.harness import HubProcess, hub_config

CHROMIUM = "/usr/bin/chromium"


def agent_config_for(
    home: Path, broker: MosquittoBroker, public_key: Path, *, site: str, agent: str,
    rate_hz: int = 20, status_interval_s: float = 2.0,
) -> Path:
    """An agent as `tests.hub.harness.agent_config` makes, with its own site and id, a slower
    source and a short status interval (samples for the backlog plot come quickly)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "agent.toml"
    path.write_text(f"""
[agent]
site = "{site}"
id = "{agent}"
state_dir = "{home / 'state'}"
shutdown_grace_s = 5

[hub]
url = "{broker.url}"
topic_prefix = "mfg"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_max_events = 10
batch_max_wait_ms = 10
status_interval_s = {status_interval_s}

[buffer]
retention_s = 3600

[commands.keys]
hub = "{public_key}"

[commands.allow]
replay = ["hub"]
pause = ["hub"]

[[sources]]
name = "sim"
type = "simulated"
rate_hz = {rate_hz}

  [[sources.signals]]
  node = "counter"
  event = "production.count"
  asset = "line1/filler"
  name = "good"
""")
    return path


def dashboard_hub_config(
    path: Path, broker: MosquittoBroker, database_url: str, *, stale_after_s: float = 3.0,
    behind_s: float = 300.0, extra: str = "",
) -> Path:
    """`tests.hub.harness.hub_config` plus `[status]` (a sample a second) and `[dashboard]`
    on port 0 (the hub logs the real one)."""
    hub_config(path, broker, database_url)
    path.write_text(path.read_text() + f"""
[status]
sample_interval_s = 1

[dashboard]
port = 0
stale_after_s = {stale_after_s}
behind_s = {behind_s}
refresh_s = 2
history_hours = 1
{extra}""")
    return path


def dashboard_url(hub: HubProcess) -> str:
    """The base URL the hub logged (`hub dashboard on URL`); waits for the line."""
    hub.wait_log("hub dashboard on ")
    found = re.search(r"hub dashboard on (http://\S+/)", hub.log_text())
    assert found, hub.log_text()[-2000:]
    return found.group(1)


async def get(url: str, *, accept: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of a GET (bounded)."""
    headers = {"Accept": accept} if accept else {}
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
        url, headers=headers
    ) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


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
