"use strict";
// report.html: the dashboard's charts drawn once from the data agents/report.cpp embedded
// (<script id="esper-data">), read from the run directory's metrics.jsonl and events.jsonl.
(() => {
  const C = EsperCharts;
  const d = JSON.parse(document.getElementById("esper-data").textContent);
  const $ = id => document.getElementById(id);
  const maxStep = Math.max(1, d.max_step || 0);
  const markers = C.markers(d.events || []);
  const tr = d.train || [], te = d.test || [];

  const loss = new C.Curves($("chart-loss"), { title: "Loss (train: mean per point)", yLabel: "loss",
    series: [{ label: "train loss", color: "#3182bd" },
      { label: "test loss", color: "#e6550d", sparse: true }] });
  loss.set([tr.map(p => [p.step, p.loss]), te.map(p => [p.step, p.loss])], maxStep);
  loss.setMarkers(markers);

  const bpb = te.some(p => p.bits_per_byte != null);
  const quality = bpb
    ? new C.Curves($("chart-quality"), { title: "Bits per byte", yLabel: "bits/byte", series: [
      { label: "train bits/byte", color: "#3182bd" },
      { label: "validation bits/byte", color: "#e6550d", sparse: true }] })
    : new C.Curves($("chart-quality"), { title: "Test accuracy", yLabel: "accuracy", ratio: true,
      series: [{ label: "test accuracy", color: "#31a354", sparse: true }] });
  if (bpb) quality.set([tr.map(p => [p.step, p.loss == null ? null : p.loss / Math.LN2]),
    te.map(p => [p.step, p.bits_per_byte])], maxStep);
  else quality.set([te.map(p => [p.step, p.accuracy])], maxStep);
  quality.setMarkers(markers);

  const sc = d.stage_counts || [];
  const stages = new C.Curves($("chart-stages"), { title: "Seeds per stage (not DORMANT)",
    yLabel: "seeds", series: C.STAGES.slice(1).map((s, i) => ({ label: s, color: C.COLORS[i + 1],
      stepped: true, integer: true })) });
  stages.set(C.STAGES.slice(1).map((s, i) => sc.map(p => [p[0], p[1][i + 1]])), maxStep);
  stages.setMarkers(markers);

  const params = new C.Curves($("chart-params"), { title: "Parameters", yLabel: "parameters",
    series: [{ label: "host", color: "#636363", stepped: true, integer: true },
      { label: "blueprints", color: "#756bb1", stepped: true, integer: true }] });
  params.set([tr.map(p => [p.step, p.host_params]), tr.map(p => [p.step, p.blueprint_params])],
    maxStep);

  C.legend($("legend"));
  const lanes = new C.Swimlane($("swimlane"));
  lanes.set(d.lanes || {}, maxStep);
  const grid = new C.SeedGrid($("grid"));
  grid.set(d.grid || []);
  window.esperReport = { data: d, charts: { loss, quality, stages, params, lanes, grid } };
})();
