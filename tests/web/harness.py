"""Processes for the web tests: a real broker and `esper dash` on ephemeral loopback ports
(endpoints through their --ready-fd pipes, as `esper run` learns them), and `esper pub` to
publish a run's telemetry and events. Everything started here is stopped by close()."""
import json
import os
import subprocess
import tempfile
import urllib.request

SKIP = 4  # ctest's SKIP_RETURN_CODE for these tests


def _ready(argv, log, timeout=20):
    """Starts argv with --ready-fd and returns (process, ready line as JSON)."""
    r, w = os.pipe()
    proc = subprocess.Popen(argv + ["--ready-fd", str(w)], pass_fds=(w,), stdout=log,
                            stderr=subprocess.STDOUT)
    os.close(w)
    import select
    data = b""
    while b"\n" not in data:
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            proc.kill()
            raise RuntimeError(f"{argv[1]} not ready within {timeout} s")
        chunk = os.read(r, 4096)
        if not chunk:
            raise RuntimeError(f"{argv[1]} exited before it was ready (rc {proc.wait()})")
        data += chunk
    os.close(r)
    return proc, json.loads(data.split(b"\n")[0])


class Bus:
    def __init__(self, esper, run="web1"):
        self.esper = esper
        self.run = run
        self.dir = tempfile.mkdtemp(prefix="esper-web-")
        self.procs = []
        log = open(os.path.join(self.dir, "broker.log"), "w")
        broker, line = _ready([esper, "broker", "--pub-port", "0", "--sub-port", "0",
                               "--rpc-port", "0"], log)
        self.procs.append(broker)
        self.pub, self.sub, self.rpc = line["pub"], line["sub"], line["rpc"]
        log = open(os.path.join(self.dir, "dash.log"), "w")
        dash, line = _ready([esper, "dash", "--bus", self.sub, "--bus-rpc", self.rpc, "--run", run,
                             "--http", "127.0.0.1:0"], log)
        self.procs.append(dash)
        self.url = line["http"].rstrip("/")

    def publish(self, topic, type_, payload):
        subprocess.run([self.esper, "pub", topic, "--bus", self.pub, "--run", self.run,
                        "--sender", "kasmina/0", "--type", type_, "--json", json.dumps(payload),
                        "--wait-ms", "2000"], check=True, stdout=subprocess.DEVNULL)

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8")

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def publish_run(bus):
    """A small run: config, three statuses (one evaluation), a seed's life, a policy change and
    an annotation. Returns what the page must show."""
    run = bus.run
    bus.publish(f"config.{run}", "runConfig",
                {"runId": run, "backend": "cpu", "worldSize": 1, "steps": 100,
                 "layers": [{"width": 32, "seeds": 4}, {"width": 32, "seeds": 4}]})
    bus.publish(f"events.policy.{run}", "policyChange",
                {"name": "heuristic", "kind": "heuristic", "action": "loaded", "step": 0,
                 "reason": "initial policy"})
    statuses = [(10, 2.0), (20, 1.5), (30, 1.25)]
    transitions = [(12, 0, 1, "DORMANT", "GERMINATED"), (14, 0, 1, "GERMINATED", "TRAINING"),
                   (24, 0, 1, "TRAINING", "GRAFTING"), (15, 1, 2, "DORMANT", "GERMINATED"),
                   (22, 1, 2, "GERMINATED", "CANCELLED")]
    for step, layer, seed, a, b in transitions:
        bus.publish(f"events.lifecycle.{run}.{layer}", "lifecycleTransition",
                    {"step": step, "layer": layer, "seed": seed, "from": a, "to": b,
                     "reason": "test", "origin": "controller"})
    for step, loss in statuses:
        status = {"step": step, "loss": loss, "accuracy": 0.5, "totalSteps": 100,
                  "seedsPerStage": [7, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]}
        if step == 30:
            status.update({"testStep": 30, "testLoss": 1.4, "testAccuracy": 0.61})
        bus.publish(f"telemetry.run.{run}", "runStatus", status)
    bus.publish(f"telemetry.seeds.{run}.0", "seedTelemetry",
                {"layer": 0, "stepEnd": 30,
                 "seeds": [{"seed": s, "stage": "GRAFTING" if s == 1 else "DORMANT",
                            "alpha": 0.5 if s == 1 else 0.0} for s in range(4)]})
    bus.publish(f"events.annotations.{run}", "annotation",
                {"kind": "note", "text": "lr drop", "step": 25})
    return {"train": [[s, l] for s, l in statuses], "test": [[30, 1.4]],
            "stages": {"GERMINATED", "TRAINING", "GRAFTING", "CANCELLED"}}
