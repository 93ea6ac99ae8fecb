"""Headless Chromium driven over the DevTools protocol: load a page, collect failed requests, evaluate
expressions in it. Debian's ``chromium`` (installed by .ci/run)."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.sync.client import ClientConnection, connect

START_TIMEOUT_S = 30
LOAD_TIMEOUT_S = 30


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    socket: ClientConnection
    failed_requests: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; events met on the way are kept."""
        self._next_id += 1
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=LOAD_TIMEOUT_S))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self._event(message)

    def load(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv(timeout=LOAD_TIMEOUT_S))
            self._event(message)
            if message.get("method") == "Page.loadEventFired":
                return
        raise TimeoutError(f"{url} did not load in {LOAD_TIMEOUT_S} s")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("method") == "Network.loadingFailed":
            self.failed_requests.append(message["params"])


@contextmanager
def chromium_page(width: int = 1280, height: int = 900, mobile: bool = False) -> Iterator[Page]:
    """A fresh headless Chromium with one page, network events on, at the given viewport."""
    executable = chromium_path()
    assert executable is not None, "chromium is not installed"
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its helper processes share the group, and go with it
        )
        try:
            port = _devtools_port(process)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
                target = next(t for t in json.load(response) if t["type"] == "page")
            with connect(target["webSocketDebuggerUrl"], max_size=None) as socket:
                page = Page(socket)
                page.call("Network.enable")
                page.call("Page.enable")
                page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=mobile,
                )
                yield page
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _devtools_port(process: subprocess.Popen[str]) -> int:
    assert process.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if match := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
            return int(match.group(1))
        if not line and process.poll() is not None:
            break
    raise RuntimeError("chromium did not start its DevTools endpoint")
