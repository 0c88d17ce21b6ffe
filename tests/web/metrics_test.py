#!/usr/bin/env python3
"""`esper dash`'s /metrics scraped and parsed with Prometheus' own Python parser (Debian's
python3-prometheus-client): every family parses, names carry the esper_ prefix and units, labels
are only run/layer/stage (plus kind/outcome/action/state/backend on the few enum-like families),
never a seed, and the values are the ones published. Also checks /api/status and /api/events.

usage: metrics_test.py ESPER"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ALLOWED_LABELS = {"run", "layer", "stage", "kind", "outcome", "action", "state", "backend"}


def main():
    from prometheus_client.parser import text_string_to_metric_families
    bus = harness.Bus(sys.argv[1], run="metrics1")
    try:
        harness.publish_run(bus)
        status, ctype, body = bus.get("/api/status")
        for _ in range(50):
            if json.loads(body)["step"] == 30:
                break
            import time
            time.sleep(0.1)
            status, ctype, body = bus.get("/api/status")
        assert json.loads(body)["test_accuracy"] == 0.61, body
        status, ctype, text = bus.get("/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), ctype
        families = {f.name: f for f in text_string_to_metric_families(text)}
        print("families:", ", ".join(sorted(families)))
        samples = {}
        for f in families.values():
            assert f.name.startswith("esper_"), f.name
            for s in f.samples:
                assert set(s.labels) <= ALLOWED_LABELS, (s.name, s.labels)
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        run = (("run", "metrics1"),)
        assert samples[("esper_run_step", run)] == 30
        assert samples[("esper_train_loss", run)] == 1.25
        assert samples[("esper_test_accuracy_ratio", run)] == 0.61
        assert samples[("esper_seeds", (("layer", "0"), ("run", "metrics1"),
                                        ("stage", "GRAFTING")))] == 1
        assert samples[("esper_lifecycle_transitions_total",
                        (("layer", "1"), ("run", "metrics1"), ("stage", "CANCELLED")))] == 1
        assert samples[("esper_annotations_total", run)] == 1
        assert families["esper_lifecycle_transitions"].type == "counter"
        assert families["esper_train_loss"].type == "gauge"
        _, _, events = bus.get("/api/events?since=0&limit=3")
        page = json.loads(events)
        assert len(page["events"]) == 3 and page["next"] == page["events"][-1]["id"], page
        _, _, rest = bus.get(f"/api/events?since={page['next']}")
        assert len(json.loads(rest)["events"]) == 4, rest  # 7 events: policy, 5 transitions, note
        print("metrics test: 1 passed, 0 failed")
    finally:
        bus.close()


if __name__ == "__main__":
    main()
