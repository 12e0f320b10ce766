"""Headless Chromium driven over the Chrome DevTools Protocol (CDP), from Python only.

No chromedriver and no Node: Chromium is started with ``--remote-debugging-port=0``, the port
is read from ``DevToolsActivePort`` in its profile folder, and one WebSocket to the browser
carries every command (flattened target sessions). A fake microphone plays a WAV file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import websockets

from services.common.audio import resample

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags known to work in this sandbox (no network, root, no GPU): see docs/browser-client.md.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",  # AudioContext runs without a click
)
START_TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    """$CHROMIUM, else the first Chromium/Chrome on PATH."""
    if explicit := os.environ.get("CHROMIUM"):
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    return None


def fake_microphone_wav(
    source: Path, dest: Path, *, silence_s: float, lead_s: float = 0.5, rate_hz: int = 48_000
) -> Path:
    """``lead_s`` of silence, the clip, then ``silence_s`` of silence: mono PCM16 WAV."""
    samples, rate = sf.read(source, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != rate_hz:
        mono = resample(mono, rate, rate_hz)
    clip = np.concatenate(
        [
            np.zeros(int(lead_s * rate_hz), dtype=np.float32),
            mono.astype(np.float32),
            np.zeros(int(silence_s * rate_hz), dtype=np.float32),
        ]
    )
    sf.write(dest, clip, rate_hz, subtype="PCM_16")
    return dest


class CdpError(RuntimeError):
    pass


class Cdp:
    """One WebSocket to the browser target; commands answered by id, events kept in order."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                future = self._waiting.pop(message.get("id", -1), None)
                if future is not None:
                    if not future.done():
                        future.set_result(message)
                else:
                    self.events.append(message)
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(CdpError("the browser connection closed"))

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout_s: float = 15.0,
    ) -> dict[str, Any]:
        if self._reader.done():
            raise CdpError("the browser connection closed")
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self.ws.send(json.dumps(message))
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._waiting.pop(message_id, None)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@dataclass
class Page:
    cdp: Cdp
    session_id: str
    target_id: str

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.cdp.send(method, params, session_id=self.session_id)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JS expression (promises awaited); page exceptions raise."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, interval_s: float = 0.1) -> Any:
        """Poll until the expression is truthy; returns its value (TimeoutError if never)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout_s:.0f} s")
            await asyncio.sleep(interval_s)

    async def click(self, selector: str) -> None:
        """A real mouse click (a user gesture) in the middle of an enabled, visible element."""
        box = await self.evaluate(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el) return 'missing';
                if (el.disabled) return 'disabled';
                const r = el.getBoundingClientRect();
                if (!r.width || !r.height) return 'hidden';
                return [r.x + r.width / 2, r.y + r.height / 2];
            }})()"""
        )
        if isinstance(box, str):
            raise CdpError(f"cannot click {selector}: it is {box}")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    async def fill(self, selector: str, text: str) -> None:
        """Replace an input's text (non-empty) as a user would: focus, select all, type it
        (``Input.insertText`` fires the input events a keyboard would)."""
        found = await self.evaluate(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el) return false;
                el.focus();
                el.select();
                return true;
            }})()"""
        )
        if not found:
            raise CdpError(f"cannot fill {selector}: it is missing")
        await self.send("Input.insertText", {"text": text})

    def console(self) -> list[str]:
        """Console messages, uncaught exceptions and browser log entries of this page."""
        lines: list[str] = []
        for event in self.cdp.events:
            if event.get("sessionId") != self.session_id:
                continue
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled":
                args = " ".join(
                    str(arg.get("value", arg.get("description", ""))) for arg in params["args"]
                )
                lines.append(f"console.{params['type']}: {args}")
            elif event.get("method") == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                lines.append(f"exception: {text}")
            elif event.get("method") == "Log.entryAdded":
                entry = params["entry"]
                lines.append(f"log.{entry['level']}: {entry['text']}")
        return lines


@dataclass
class Browser:
    process: asyncio.subprocess.Process
    cdp: Cdp
    log_path: Path
    pages: list[Page] = field(default_factory=list)

    async def new_page(self, url: str) -> Page:
        created = await self.cdp.send("Target.createTarget", {"url": "about:blank"})
        target_id = created["targetId"]
        attached = await self.cdp.send(
            "Target.attachToTarget", {"targetId": target_id, "flatten": True}
        )
        page = Page(self.cdp, attached["sessionId"], target_id)
        for domain in ("Runtime", "Log", "Page"):
            await page.send(f"{domain}.enable")
        navigation = await page.send("Page.navigate", {"url": url})
        if "errorText" in navigation:
            raise CdpError(f"navigating to {url}: {navigation['errorText']}")
        self.pages.append(page)
        loaded = "location.href !== 'about:blank' && document.readyState === 'complete'"
        await page.wait_for(loaded, timeout_s=15)
        return page

    def log_tail(self, lines: int = 30) -> str:
        """The end of Chromium's own stdout/stderr."""
        return _tail(self.log_path, lines)


def _tail(path: Path, lines: int) -> str:
    """The last lines of a Chromium log, without its D-Bus noise (no bus in a sandbox)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join([line for line in text if "dbus" not in line][-lines:])


def _read_devtools_port(profile: Path) -> str | None:
    """ws://… of the browser target, from DevToolsActivePort (port, then path), once written."""
    try:
        port, path = (profile / "DevToolsActivePort").read_text().split("\n")[:2]
        return f"ws://127.0.0.1:{int(port)}{path}" if path else None
    except (OSError, ValueError):
        return None


async def _devtools_url(profile: Path, process: asyncio.subprocess.Process, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(
                f"chromium exited with {process.returncode} at start:\n{_tail(log, 30)}"
            )
        if url := _read_devtools_port(profile):
            return url
        await asyncio.sleep(0.05)
    raise RuntimeError(f"chromium did not open its DevTools port within {START_TIMEOUT_S:.0f} s")


@asynccontextmanager
async def launch_chromium(
    binary: str,
    workdir: Path,
    *,
    fake_microphone: Path | None = None,
    loop_audio: bool = False,
    extra_args: tuple[str, ...] = (),
) -> AsyncIterator[Browser]:
    """Headless Chromium with a fresh profile; ``fake_microphone`` is what getUserMedia hears."""
    profile = workdir / "profile"
    profile.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "chromium.log"
    args = [*HEADLESS_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
    if fake_microphone is not None:
        audio = str(fake_microphone) + ("" if loop_audio else "%noloop")
        args += [
            "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={audio}",
        ]
    args += [*extra_args, "about:blank"]
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary, *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        url = await _devtools_url(profile, process, log_path)
        ws = await websockets.connect(url, max_size=None, ping_interval=None)
        cdp = Cdp(ws)
        try:
            yield Browser(process, cdp, log_path)
        finally:
            with contextlib.suppress(Exception):
                await cdp.send("Browser.close", timeout_s=5)
            await cdp.close()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
