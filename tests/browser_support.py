"""A real browser for tests: headless Chromium (Debian's ``chromium`` package), driven
over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no debugging port
that anyone else on the machine could reach).

``headless_browser`` fails (never skips) when ``FLOWRIG_REQUIRE_DOCKER=1`` (CI) and no
Chromium is installed; CI's ``.ci/run`` installs it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

#: Flags for a throwaway headless Chromium that talks to nothing but the pages it is
#: sent to (it runs as root in CI, hence no sandbox).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--window-size=1400,1000",
    "--remote-debugging-pipe",
)


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevToolsError(RuntimeError):
    """A DevTools command failed, or no answer came in time."""


class Browser:
    """One headless Chromium with one page, driven over its DevTools pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        # Chromium reads commands from fd 3 and writes answers to fd 4, each a JSON
        # text ended by a NUL byte.
        commands_r, self._commands_w = os.pipe()
        self._answers_r, answers_w = os.pipe()

        def pipes_at_3_and_4() -> None:
            # Through high numbers first: either pipe may already sit at 3 or 4.
            os.dup2(commands_r, 100)
            os.dup2(answers_w, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=pipes_at_3_and_4, close_fds=False,
        )
        os.close(commands_r)
        os.close(answers_w)
        self._next_id = 0
        self._answers: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read_answers, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def _read_answers(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._answers_r, 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                waiting = self._answers.get(message.get("id", -1))
                if waiting is not None:
                    waiting.put(message)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False,
             timeout: float = 60) -> dict[str, Any]:
        """Send one DevTools command (to the page with ``session``) and return its result."""
        with self._lock:
            self._next_id += 1
            number = self._next_id
            self._answers[number] = queue.Queue()
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands_w, json.dumps(message).encode() + b"\0")
        try:
            answer = self._answers[number].get(timeout=timeout)
        except queue.Empty:
            raise DevToolsError(f"{method}: no answer within {timeout} s") from None
        finally:
            self._answers.pop(number, None)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def navigate(self, url: str) -> None:
        result = self.call("Page.navigate", {"url": url}, session=True)
        if result.get("errorText"):
            raise DevToolsError(f"navigating to {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True
        )
        if "exceptionDetails" in result:
            raise DevToolsError(f"the page's JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll ``expression`` until it is truthy; its last value when time runs out
        (DevToolsError)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise DevToolsError(f"{what} within {timeout:g} s (last value {value!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(OSError):
            os.close(self._commands_w)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            os.close(self._answers_r)


@pytest.fixture
def headless_browser() -> Iterator[Browser]:
    """A headless Chromium with a new, empty profile, closed after the test."""
    binary = chromium_binary()
    if binary is None:
        message = "no Chromium: install Debian's chromium package (apt-get install chromium)"
        if os.environ.get("FLOWRIG_REQUIRE_DOCKER") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    profile = Path(tempfile.mkdtemp(prefix="flowrig-chromium-"))
    browser = Browser(binary, profile)
    try:
        yield browser
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)


def artifacts_dir(tmp_path: Path) -> Path:
    """Where a failing browser test saves its screenshot: ``FLOWRIG_TEST_ARTIFACTS``,
    else the test's own temporary directory."""
    configured = os.environ.get("FLOWRIG_TEST_ARTIFACTS")
    return Path(configured) if configured else tmp_path
