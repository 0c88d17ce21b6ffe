#!/usr/bin/env python3
"""The live dashboard in a real browser: a broker and `esper dash` run, `esper pub` publishes a
small run, headless Chromium (Debian's `chromium`) opens the page through the DevTools protocol
(python3-websocket), and the test asserts that the page logged no console error or exception,
that the loss chart holds exactly the published points, that the swimlane shows the published
stages, and that a status published after the page loaded arrives live. It saves a screenshot
to OUT_DIR/dashboard.png. Then a text run: the page, and report.html written by `esper report`,
draw the validation bits per byte (a screenshot of the report in OUT_DIR/report.png).

usage: dash_browser_test.py ESPER OUT_DIR
Exit code 4 (ctest "Skipped") only when Chromium cannot start here; any other problem fails."""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CHROMIUM_NAMES = ["chromium", "chromium-browser", "google-chrome"]


def skip(why):
    print(f"SKIPPED: {why}")
    sys.exit(harness.SKIP)


class Browser:
    """Headless Chromium with a DevTools session on one page."""

    def __init__(self, binary):
        import websocket  # python3-websocket
        self.profile = tempfile.mkdtemp(prefix="esper-chromium-")
        self.log = open(os.path.join(self.profile, "chromium.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             "--window-size=1280,1800", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 30
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                with open(os.path.join(self.profile, "chromium.log")) as f:
                    tail = f.read()[-1500:]
                skip(f"chromium did not start (rc {self.proc.poll()}):\n{tail}")
            time.sleep(0.1)
        time.sleep(0.2)
        port = int(open(port_file).read().split()[0])
        targets = []
        for _ in range(50):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if targets:
                break
            time.sleep(0.1)
        if not targets:
            raise RuntimeError("chromium started but shows no page target")
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self.next_id = 0
        self.errors = []

    def _event(self, msg):
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console." + p["type"] + ": " +
                               " ".join(str(a.get("value", a.get("description", "")))
                                        for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + d.get("exception", {}).get("description",
                                                                          d.get("text", "")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(f"log: {e.get('text')} {e.get('url', '')}")

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate failed: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression, timeout=20):
        deadline = time.time() + timeout
        value = None
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for: {expression} (last value {value!r})")

    def close(self):
        try:
            self.proc.terminate()
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


PAGE_STATE = """(() => {
  const d = window.esperDash;
  if (!d || !d.state.updates) return null;
  const pts = d.charts.loss.points();
  const canvas = document.querySelector('#swimlane canvas');
  return {train: pts['train loss'], test: pts['test loss'], stages: d.charts.swimlane.stagesShown(),
          domStages: canvas ? canvas.dataset.stages : '', rows: canvas ? +canvas.dataset.rows : 0,
          events: document.querySelectorAll('#events tbody tr').length,
          policy: document.getElementById('policy').textContent,
          run: document.getElementById('run-id').textContent};
})()"""


def check_report(browser, esper, run_dir, out_dir):
    """`esper report` on a text run's directory; report.html (a file, no server) draws the
    validation bits per byte of every evaluation."""
    os.makedirs(run_dir, exist_ok=True)
    bpb = [[100, 3.5], [200, 2.75], [300, 2.25]]
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step in range(10, 301, 10):
            f.write(json.dumps({"step": step, "epoch": 0, "split": "train", "loss": 3.0 - step / 200,
                                "total_steps": 300, "host_params": 1000,
                                "blueprint_params": 0}) + "\n")
            for s, b in bpb:
                if s == step:
                    f.write(json.dumps({"step": s, "epoch": 0, "split": "test", "loss": b * 0.693,
                                        "accuracy": 0.4, "bits_per_byte": b,
                                        "perplexity": 2 ** b}) + "\n")
    subprocess.run([esper, "report", run_dir, "--quiet"], check=True, stdout=subprocess.DEVNULL)
    browser.call("Page.navigate", url="file://" + os.path.join(run_dir, "report.html"))
    got = browser.wait_for("(() => { const r = window.esperReport; "
                           "const p = r && r.charts.quality.points()['validation bits/byte']; "
                           "return p && p.length && p; })()")
    assert got == bpb, f"report's validation bits/byte curve {got}"
    text = browser.evaluate("document.body.textContent")
    assert "Bits per byte" in text and "final validation bits per byte" in text, text[:400]
    time.sleep(0.3)
    shot = browser.call("Page.captureScreenshot", format="png")
    with open(os.path.join(out_dir, "report.png"), "wb") as f:
        f.write(base64.b64decode(shot["data"]))


def main():
    esper, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    binary = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if binary is None:
        skip("no chromium on PATH (scripts/setup-deps.sh installs Debian's chromium)")
    bus = harness.Bus(esper)
    browser = None
    try:
        expected = harness.publish_run(bus)
        browser = Browser(binary)
        for domain in ("Runtime", "Log", "Page"):
            browser.call(f"{domain}.enable")
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=1700,
                     deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", url=bus.url + "/")
        # Rendered (not just received): the charts and the table hold everything published.
        state = browser.wait_for("(() => { const s = " + PAGE_STATE + "; return s && s.train && "
                                 "s.train.length >= 3 && s.events >= 7 && s.rows >= 2 && s; })()")
        print("page state:", json.dumps(state)[:600])
        assert state["train"] == expected["train"], f"train curve {state['train']}"
        assert state["test"] == expected["test"], f"test curve {state['test']}"
        assert set(state["stages"]) == expected["stages"], f"swimlane stages {state['stages']}"
        assert set(state["domStages"].split(",")) == expected["stages"], state["domStages"]
        assert state["rows"] == 2, f"swimlane rows {state['rows']}"
        assert state["events"] >= 7, f"event rows {state['events']}"
        assert "heuristic" in state["policy"], state["policy"]
        assert bus.run in state["run"], state["run"]
        # Live: a status published now reaches the open page over the event stream.
        bus.publish(f"telemetry.run.{bus.run}", "runStatus",
                    {"step": 40, "loss": 1.0, "totalSteps": 100})
        live = browser.wait_for("(() => { const p = window.esperDash.charts.loss.points()"
                                "['train loss']; return p.length === 4 && p; })()")
        assert live[-1] == [40, 1.0], live
        time.sleep(0.5)  # let the last frame render
        shot = browser.call("Page.captureScreenshot", format="png")
        path = os.path.join(out_dir, "dashboard.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"screenshot: {path}")
        # A text run: validation bits per byte takes the quality chart's place.
        bus.publish(f"telemetry.run.{bus.run}", "runStatus",
                    {"step": 50, "loss": 1.0, "totalSteps": 100, "testStep": 50, "testLoss": 1.25,
                     "testAccuracy": 0.5, "testBitsPerByte": 1.75})
        bpb = browser.wait_for("(() => { const q = window.esperDash.charts.quality; "
                               "const p = q && q.points()['validation bits/byte']; "
                               "return p && p.length && p; })()")
        assert bpb == [[50, 1.75]], f"validation bits/byte curve {bpb}"
        assert "bits/byte" in browser.evaluate("document.getElementById('cards').textContent")
        report_dir = os.path.join(bus.dir, "text-run")
        check_report(browser, esper, report_dir, out_dir)
        browser.call("Runtime.evaluate", expression="1")  # drain late console events
        assert not browser.errors, "console errors:\n" + "\n".join(browser.errors)
        print("dash browser test: 2 passed, 0 failed")
    finally:
        if browser:
            browser.close()
        bus.close()


if __name__ == "__main__":
    main()
