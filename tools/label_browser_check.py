#!/usr/bin/env python3
"""Real-browser check of `psotune label` (issue 21), dev-side.

Starts `psotune label` on the built-in emoji model, drives headless Chromium
(or Firefox) through the WebDriver protocol of chromedriver (or geckodriver) (plain HTTP, no Python packages),
labels 10 pairs (5 by clicking, 5 with the 1/2 keys), undoes the last one
with the u key, reloads the page (the tab keeps its pair), and checks that
pairs.jsonl holds exactly the 9 expected choices. Also checks that the page
fits a 400 px wide window, and saves a screenshot (docs/label-page.png).

    apt-get install chromium chromium-driver
    cargo build --release -p psotune-cli
    python3 tools/label_browser_check.py [--psotune target/release/psotune] [--screenshot docs/label-page.png]
    python3 tools/label_browser_check.py --browser firefox      (firefox-esr; geckodriver: `cargo install geckodriver`)
"""
import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C web element key


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    def __init__(self, port, browser, binary):
        self.base = f"http://127.0.0.1:{port}"
        if browser == "chromium":
            caps = {"browserName": "chrome", "goog:chromeOptions": {
                "binary": binary, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,760"]}}
        else:
            caps = {"browserName": "firefox", "moz:firefoxOptions": {"binary": binary, "args": ["-headless"]}}
        self.sid = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        if browser == "firefox":
            self.s("POST", "/window/rect", {"width": 1100, "height": 760})

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            sys.exit(f"WebDriver {method} {path}: {e.code} {e.read().decode()[:500]}")

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def click(self, css):
        el = self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]
        self.s("POST", f"/element/{el}/click", {})

    def key(self, k):
        self.s("POST", "/actions", {"actions": [{"type": "key", "id": "kb", "actions": [
            {"type": "keyDown", "value": k}, {"type": "keyUp", "value": k}]}]})

    def quit(self):
        self.call("DELETE", f"/session/{self.sid}")


def wait(what, fn, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--psotune", default=os.path.join(ROOT, "target/release/psotune"))
    ap.add_argument("--browser", choices=["chromium", "firefox"], default="chromium")
    ap.add_argument("--binary", help="the browser (default /usr/bin/chromium or /usr/bin/firefox-esr)")
    ap.add_argument("--driver", help="chromedriver or geckodriver (default /usr/bin/chromedriver or geckodriver on PATH)")
    ap.add_argument("--screenshot", help="default docs/label-page.png for Chromium, none for Firefox")
    a = ap.parse_args()
    chromium = a.browser == "chromium"
    a.binary = a.binary or ("/usr/bin/chromium" if chromium else "/usr/bin/firefox-esr")
    a.driver = a.driver or ("/usr/bin/chromedriver" if chromium else "geckodriver")
    if a.screenshot is None and chromium:
        a.screenshot = os.path.join(ROOT, "docs/label-page.png")

    work = tempfile.mkdtemp(prefix="psotune-label-browser-")
    prompts = os.path.join(work, "prompts.txt")
    with open(prompts, "w") as f:
        f.write("\n".join(f"an emoji of {c}" for c in
                          ["a cat face", "a red apple", "a rocket", "an octopus", "a sun", "a tree", "a car", "a heart"]) + "\n")
    out = os.path.join(work, "labels")
    server = subprocess.Popen([a.psotune, "label", "--model", "models/emoji", "--prompts", prompts, "--out", out,
                               "--port", "0", "--labeler", "browser"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    url = line.split("open ")[1].split()[0]
    dport = free_port()
    driver_proc = subprocess.Popen([a.driver, f"--port={dport}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait("the WebDriver server", lambda: socket.socket().connect_ex(("127.0.0.1", dport)) == 0, 30)
        d = Driver(dport, a.browser, a.binary)
        d.s("POST", "/url", {"url": url})
        # The page publishes the pair it shows on #pair's data- attributes.
        shown = lambda: d.js("const p = document.getElementById('pair').dataset; "
                             "return p.id && !p.busy ? {id: p.id, left: p.left, right: p.right} : null")
        expected = []
        for i in range(10):
            pair = wait("a pair", shown)
            side = "left" if i % 2 == 0 else "right"
            if i < 5:
                d.click(f"#{side}")
            else:
                d.key("1" if side == "left" else "2")
            expected.append((pair["id"], pair[side].lstrip("/")))
            wait("the next pair", lambda: (shown() or {}).get("id") not in (None, pair["id"]))
            if i == 8 and a.screenshot:
                wait("the pair to load", lambda: d.js("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
                png = base64.b64decode(d.s("GET", "/screenshot"))
                os.makedirs(os.path.dirname(a.screenshot), exist_ok=True)
                with open(a.screenshot, "wb") as f:
                    f.write(png)
        d.key("u")
        undone = expected.pop()
        wait("the undone pair", lambda: (shown() or {}).get("id") == undone[0])
        d.s("POST", "/refresh", {})
        again = wait("a pair after reload", shown)
        assert again["id"] == undone[0], f"after reload the tab shows {again['id']}, not its pair {undone[0]}"
        status = d.js("return document.getElementById('progress').textContent")
        d.s("POST", "/window/rect", {"width": 400, "height": 800})
        narrow = d.js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert narrow, "the page scrolls sideways at 400 px"
        d.quit()
    finally:
        driver_proc.terminate()
        server.terminate()
        server.wait()
    with open(os.path.join(out, "pairs.jsonl")) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    got = [(l["pair"], l["chosen"]) for l in lines]
    assert got == expected, f"manifest {got}\nexpected {expected}"
    shot = f"; screenshot {os.path.relpath(a.screenshot, ROOT)}" if a.screenshot else ""
    print(f"ok: 10 pairs labelled in {a.browser} (5 clicks, 5 keys), one undone, reload kept the pair; "
          f"pairs.jsonl holds the 9 expected choices; page fits 400 px; progress line: {status!r}{shot}")


if __name__ == "__main__":
    main()
