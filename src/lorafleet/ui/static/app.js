// lorafleet dashboard: the loss curve (live over server-sent events) and the usage chart, drawn with
// uPlot. Everything here adds to pages that read fine without it: the same figures are in tables.
"use strict";

function readJson(id) {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent) : null;
}

function chartWidth(node) {
  return Math.max(320, Math.min(node.clientWidth || 720, 960));
}

function lossChart() {
  const node = document.getElementById("loss-chart");
  const points = readJson("loss-points");
  if (!node || !points) return;
  const steps = points.map((p) => p[0]);
  const losses = points.map((p) => p[1]);
  const plot = new uPlot(
    {
      width: chartWidth(node),
      height: 280,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: "loss" }],
      series: [{ label: "step" }, { label: "loss", stroke: "#1f6feb", width: 2, points: { show: steps.length < 60 } }],
    },
    [steps, losses],
    node,
  );
  node.dataset.points = String(steps.length);
  const url = node.dataset.stream;
  if (!url) return;
  const count = document.getElementById("loss-count");
  const table = document.querySelector("#loss-table tbody");
  const stream = new EventSource(url);
  stream.addEventListener("job", (message) => {
    const event = JSON.parse(message.data);
    setText("job-status", event.status);
    if (!event.point) return;
    steps.push(event.point[0]);
    losses.push(event.point[1]);
    plot.setData([steps, losses]);
    node.dataset.points = String(steps.length);
    if (count) count.textContent = String(steps.length);
    setText("job-step", String(event.point[0]));
    if (table) {
      const row = table.insertRow();
      row.insertCell().textContent = String(event.point[0]);
      row.insertCell().textContent = event.point[1].toPrecision(3);
    }
  });
  stream.addEventListener("end", (message) => {
    stream.close();
    setText("job-status", JSON.parse(message.data).status);
    window.setTimeout(() => window.location.reload(), 500); // the page then shows the version it made
  });
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node && text) node.textContent = text;
}

function usageChart() {
  const node = document.getElementById("usage-chart");
  const data = readJson("usage-points");
  if (!node || !data || data.days.length === 0) return;
  const days = data.days.map((day) => Date.parse(day + "T00:00:00Z") / 1000);
  new uPlot(
    {
      width: chartWidth(node),
      height: 240,
      axes: [{}, { label: "cost" }],
      series: [{ label: "day" }, { label: "cost", stroke: "#8250df", width: 2, fill: "rgba(130,80,223,0.1)" }],
    },
    [days, data.cost],
    node,
  );
}

document.addEventListener("DOMContentLoaded", () => {
  lossChart();
  usageChart();
});
