#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe: NUL-terminated JSON on
fds 3 and 4, no websocket, only the standard library). Used by the status page's test and to take the README's
screenshot.

  page_driver.py URL --wait-ready N            prints "ready <json>" once the page shows N shards ready, then reads
                                               stdin lines:  "restarted ORDINAL" waits until that row shows a
                                               restart and the feed a crash, without a reload (prints "restarted
                                               <json>");  "screenshot PATH" saves a PNG;  "quit" ends.
Every wait has a deadline (--timeout, default 30 s); on a miss it prints "timeout <what the page shows>" and exits 1.
"""
import argparse, fcntl, json, os, shutil, subprocess, sys, tempfile, time

SNAPSHOT = """(() => {
  const rows = [...document.querySelectorAll('#workers tr')].map(r => ({
    ordinal: Number(r.dataset.ordinal), state: r.dataset.state, restarts: Number(r.dataset.restarts), pid: r.dataset.pid }));
  const feed = [...document.querySelectorAll('#feed li')].map(li => ({ kind: li.dataset.kind, text: li.textContent }));
  return JSON.stringify({ ready: document.getElementById('ready')?.dataset.ready, rows, feed,
                          loads: performance.getEntriesByType('navigation').length, navigationStart: performance.timeOrigin });
})()"""


class Browser:
    def __init__(self, binary, profile):
        # Above fd 9, so that wiring them to 3 and 4 in the child cannot overwrite one with the other.
        high = lambda fd: (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10), os.close(fd))[0]
        to_chrome_r, self.to_chrome = map(high, os.pipe())
        self.from_chrome, from_chrome_w = map(high, os.pipe())

        def wire():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-pipe", "--user-data-dir=" + profile, "--window-size=1400,900", "about:blank"],
            preexec_fn=wire, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0

    def call(self, method, params=None, session=None, deadline=None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                if deadline and time.monotonic() > deadline:
                    raise TimeoutError(method)
                chunk = os.read(self.from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def close(self):
        try:
            self.call("Browser.close", deadline=time.monotonic() + 5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--wait-ready", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = parser.parse_args()
    profile = tempfile.mkdtemp(prefix="page-driver-")
    browser = Browser(args.chromium, profile)
    try:
        start = time.monotonic() + args.timeout
        target = browser.call("Target.createTarget", {"url": args.url}, deadline=start)["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True}, deadline=start)["sessionId"]

        def snapshot(deadline):
            result = browser.call("Runtime.evaluate", {"expression": SNAPSHOT, "returnByValue": True}, session, deadline)
            value = result.get("result", {}).get("value")
            return json.loads(value) if isinstance(value, str) else {}

        def wait(what, condition):
            deadline = time.monotonic() + args.timeout
            shown = {}
            while time.monotonic() < deadline:
                try:
                    shown = snapshot(deadline)
                except RuntimeError:
                    shown = {}
                if shown and condition(shown):
                    return shown
                time.sleep(0.2)
            print("timeout " + what + " " + json.dumps(shown), flush=True)
            sys.exit(1)

        first = wait("ready", lambda s: s.get("ready") == str(args.wait_ready))
        origin = first["navigationStart"]
        print("ready " + json.dumps(first), flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "restarted":
                ordinal = int(words[1])
                shown = wait("restarted", lambda s: any(r["ordinal"] == ordinal and r["restarts"] >= 1 and r["state"] == "ready" for r in s["rows"])
                             and any(f["kind"] == "crash" for f in s["feed"]))
                # The same document: not reloaded.
                if shown["navigationStart"] != origin:
                    print("reloaded " + json.dumps(shown), flush=True)
                    sys.exit(1)
                print("restarted " + json.dumps(shown), flush=True)
            elif words[0] == "screenshot":
                png = browser.call("Page.captureScreenshot", {"format": "png"}, session, time.monotonic() + args.timeout)["data"]
                import base64
                with open(words[1], "wb") as out:
                    out.write(base64.b64decode(png))
                print("screenshot " + words[1], flush=True)
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
