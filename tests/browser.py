"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`):
JSON messages separated by NUL bytes on file descriptors 3 (to the browser) and 4 (from it).
Standard library only; finds the system Chromium (`EGJAX_CHROMIUM`, or chromium /
chromium-browser / google-chrome on PATH)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    chosen = os.environ.get("EGJAX_CHROMIUM")
    if chosen:
        return shutil.which(chosen) or (chosen if os.access(chosen, os.X_OK) else None)
    return next((path for path in map(shutil.which, NAMES) if path), None)


def _above_four(fd: int) -> int:
    """The same pipe end on a descriptor above 4 (3 and 4 are Chromium's)."""
    if fd > 4:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium with one page; `events` collects the page's events."""

    def __init__(self, executable: str, width: int = 1440, height: int = 900):
        self.profile = tempfile.mkdtemp(prefix="egjax-chromium-")
        to_browser, self._write = map(_above_four, os.pipe())
        self._read, from_browser = map(_above_four, os.pipe())
        # Chromium reads commands on fd 3 and writes replies on fd 4 (no Python runs in the child)
        with open(os.devnull, "wb") as quiet:
            self.pid = os.posix_spawn(executable, [
                executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
                "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--mute-audio",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "about:blank"], os.environ, file_actions=[
                (os.POSIX_SPAWN_DUP2, to_browser, 3), (os.POSIX_SPAWN_DUP2, from_browser, 4),
                (os.POSIX_SPAWN_DUP2, quiet.fileno(), 1), (os.POSIX_SPAWN_DUP2, quiet.fileno(), 2)])
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next, self.events, self.session = b"", 0, [], None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """Set the page's viewport to `width` x `height` CSS px (1 device px each)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _message(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        """Send a command (to the page once attached) and return its result."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, expression: str, timeout: float = 20) -> None:
        """Poll until the JavaScript `expression` is truthy."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.05)

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        """Open `url` afresh (also when only its #fragment differs from the page's) and wait
        for its load event."""
        if url != "about:blank":
            self.navigate("about:blank")
        seen = len(self.events)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while not any(e["method"] == "Page.loadEventFired" for e in self.events[seen:]):
            self.call("Runtime.evaluate", expression="0")        # pumps events
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the first element matching `selector`."""
        box = self.evaluate(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: "nearest"}});
            const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];
        }})()""")
        if box is None:
            raise LookupError(f"nothing matches {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Click the first element matching `selector`, select its text and type `text`
        over it (as keystrokes do: one input event)."""
        self.click(selector)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        self.call("Input.insertText", text=text)

    def errors(self, since: int = 0) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far (from event
        number `since` on)."""
        self.call("Runtime.evaluate", expression="0")
        found = []
        for event in self.events[since:]:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails")))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(str(params.get("args")))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def screenshot(self, path, clip=None) -> None:
        """PNG of the page's viewport, or of `clip` (x, y, width, height) CSS px of it."""
        options = {} if clip is None else {"clip": dict(zip(("x", "y", "width", "height"), clip),
                                                        scale=1)}
        data = self.call("Page.captureScreenshot", format="png", **options)["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError, ConnectionError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        for fd in (self._read, self._write):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)
