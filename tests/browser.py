"""A real headless browser for the page tests: the system's Chromium driven over its DevTools protocol (one
websocket, websocket-client), nothing downloaded. `browser()` is None where no Chromium is installed; the `tab`
fixture (conftest.py) skips then, unless GUIDANCE_REQUIRE_BROWSER is set (CI), where it fails."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REQUIRED = "GUIDANCE_REQUIRE_BROWSER"  # set by .ci/run: a missing browser fails the page tests instead of skipping


def executable() -> str | None:
    return next((path for name in EXECUTABLES if (path := shutil.which(name))), None)


class Page:
    """One tab: navigate, evaluate JavaScript, take screenshots; `errors` collects console errors and uncaught
    exceptions, `failed` the resources that failed to load."""

    def __init__(self, connection: Any, session: str) -> None:
        self._connection, self._session = connection, session
        self.errors: list[str] = []
        self.failed: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self._connection.call(method, self._session, **params)

    def open(self, url: str, timeout: float = 30.0) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)
        self._connection.wait(lambda event: event.get("method") == "Page.loadEventFired", timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited); a thrown exception fails the call."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])

    def note(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(json.dumps(params.get("args"))[:500])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(params["entry"].get("text", "")[:500])
        elif method == "Network.loadingFailed":
            self.failed.append(params.get("errorText", ""))


class Connection:
    """The browser's DevTools websocket: commands with ids, events dispatched to the page of their session."""

    def __init__(self, url: str) -> None:
        import websocket

        self._socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self._next = 0
        self.pages: dict[str, Page] = {}

    def _receive(self, timeout: float) -> dict[str, Any]:
        self._socket.settimeout(timeout)
        message = json.loads(self._socket.recv())
        if "method" in message and message.get("sessionId") in self.pages:
            self.pages[message["sessionId"]].note(message)
        return message

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        request = {"id": self._next, "method": method, "params": params}
        if session is not None:
            request["sessionId"] = session
        self._socket.send(json.dumps(request))
        while True:
            message = self._receive(30.0)
            if message.get("id") == self._next:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait(self, matches: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(max(deadline - time.monotonic(), 0.1))
            if matches(message):
                return message

    def new_page(self, width: int, height: int) -> Page:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = self.pages[session] = Page(self, session)
        page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        return page

    def close(self) -> None:
        self._socket.close()


@contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator[Page | None]:
    """A headless Chromium tab (None where no Chromium is installed); the browser is stopped on exit."""
    path = executable()
    if path is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        process = subprocess.Popen(
            [path, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--hide-scrollbars", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        connection = None
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{path} did not start its DevTools endpoint")
                time.sleep(0.1)
            port, endpoint = port_file.read_text().splitlines()[:2]
            connection = Connection(f"ws://127.0.0.1:{port}{endpoint}")
            yield connection.new_page(width, height)
        finally:
            if connection is not None:
                connection.close()
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def required() -> bool:
    return os.environ.get(REQUIRED, "") not in ("", "0")


def pixel_spread(png: bytes) -> float:
    with Image.open(io.BytesIO(png)) as image:
        return float(np.asarray(image.convert("L"), dtype=np.float64).std())


def load(tab: Page, page: Path) -> None:
    """Open the page; no console error, no failed resource, every image element decoded."""
    tab.errors.clear()
    tab.failed.clear()
    tab.open(page.as_uri())
    assert tab.evaluate("document.fonts.ready.then(() => document.readyState)") == "complete"
    sizes = tab.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert sizes and all(done and width > 0 for _, done, width in sizes), sizes
    assert tab.errors == [] and tab.failed == []
