// The chatctl dashboard: reads the admin address's live feed (server-sent events, read with
// fetch so the token can travel in a header), keeps five minutes of samples, and draws them.
// Everything shown that a worker or a user could influence is set as text, never as markup.
"use strict";

const HISTORY_MS = 5 * 60 * 1000;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const samples = []; // {t, workers: {id: {connections, packets, cpu, memory}}}
let token = "";

function $(id) { return document.getElementById(id); }

function loadToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem("chatctl-admin-token", hash.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  token = sessionStorage.getItem("chatctl-admin-token") || "";
  $("token").value = token;
}

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
}

function bytes(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  return (n / 1024).toFixed(0) + " KiB";
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

// Messages per second of one worker between the last two samples (a restarted process
// counts from zero again: its count is then the rate's numerator).
function rate(id, key) {
  if (samples.length < 2) return 0;
  const a = samples[samples.length - 2], b = samples[samples.length - 1];
  const before = a.workers[id], now = b.workers[id];
  if (!before || !now) return 0;
  const dt = (b.t - a.t) / 1000;
  if (dt <= 0) return 0;
  const delta = now[key] >= before[key] ? now[key] - before[key] : now[key];
  return delta / dt;
}

function sparkline(values, color) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", "90");
  svg.setAttribute("height", "20");
  const max = Math.max(1e-9, ...values);
  const points = values.map((v, i) =>
    (values.length < 2 ? 0 : (i / (values.length - 1)) * 88 + 1).toFixed(1) + "," + (19 - (v / max) * 18).toFixed(1));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", color);
  svg.appendChild(line);
  return svg;
}

function showWorkers(snapshot) {
  $("app").textContent = snapshot.name;
  const online = snapshot.workers.filter((w) => w.status === "online").length;
  $("summary").textContent = online + "/" + snapshot.workers.length + " online · listen " +
    snapshot.listen + " · master pid " + snapshot.master_pid + " · up " + duration(snapshot.uptime_ms);
  const body = $("workers").querySelector("tbody");
  body.replaceChildren();
  snapshot.workers.forEach((w, index) => {
    const details = snapshot.details[index] || { stats: {} };
    const row = document.createElement("tr");
    row.dataset.worker = String(w.id);
    cell(row, String(w.id));
    cell(row, w.pid == null ? "-" : String(w.pid));
    cell(row, w.status, "status-" + w.status);
    cell(row, duration(w.uptime_ms));
    const restarts = cell(row, String(w.restarts));
    const causes = Object.entries(details.restarts_by_cause || {}).filter(([, n]) => n > 0);
    restarts.title = causes.map(([c, n]) => c + ": " + n).join(", ");
    cell(row, w.cpu_percent.toFixed(1) + "%");
    cell(row, bytes(w.memory_bytes));
    cell(row, String(w.connections));
    cell(row, (rate(w.id, "packets")).toFixed(1), "rate");
    const history = samples.map((s) => s.workers[w.id]).filter(Boolean);
    const color = COLORS[w.id % COLORS.length];
    cell(row, "").appendChild(sparkline(history.map((h) => h.cpu), color));
    cell(row, "").appendChild(sparkline(history.map((h) => h.memory), color));
    body.appendChild(row);
  });
  // The number to scale to starts as the app's own, until the operator types another.
  const instances = $("instances");
  if (!instances.dataset.edited) instances.value = String(snapshot.workers.length);
}

function record(snapshot) {
  const workers = {};
  snapshot.workers.forEach((w, index) => {
    const stats = (snapshot.details[index] || {}).stats || {};
    workers[w.id] = {
      connections: w.connections,
      packets: (stats.packets_in || 0) + (stats.packets_out || 0),
      cpu: w.cpu_percent,
      memory: w.memory_bytes,
    };
  });
  samples.push({ t: snapshot.time_ms, workers });
  while (samples.length > 2 && samples[0].t < snapshot.time_ms - HISTORY_MS) samples.shift();
}

// One line per worker over the samples kept; `value(sampleIndex, workerId)`.
function drawChart(canvas, value) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  const ids = new Set();
  samples.forEach((s) => Object.keys(s.workers).forEach((id) => ids.add(id)));
  const series = [...ids].map((id) => ({ id, values: samples.map((_, i) => value(i, id)) }));
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter((v) => v != null)));
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#555";
  ctx.font = "11px sans-serif";
  ctx.beginPath();
  ctx.moveTo(pad, 5);
  ctx.lineTo(pad, h - pad + 5);
  ctx.lineTo(w - 5, h - pad + 5);
  ctx.stroke();
  ctx.fillText(max.toFixed(max < 10 ? 1 : 0), 2, 12);
  ctx.fillText("0", 2, h - pad + 5);
  // The time axis spans the samples kept (up to five minutes), at least ten seconds.
  const last = samples.length ? samples[samples.length - 1].t : 0;
  const span = Math.max(10_000, samples.length ? last - samples[0].t : 0);
  const t0 = last - span;
  const x = (t) => pad + ((t - t0) / span) * (w - pad - 5);
  const y = (v) => h - pad + 5 - (v / max) * (h - pad);
  let points = 0;
  series.forEach((s) => {
    ctx.strokeStyle = COLORS[Number(s.id) % COLORS.length];
    ctx.beginPath();
    let started = false;
    s.values.forEach((v, i) => {
      if (v == null) { started = false; return; }
      points++;
      if (started) ctx.lineTo(x(samples[i].t), y(v));
      else ctx.moveTo(x(samples[i].t), y(v));
      started = true;
    });
    ctx.stroke();
    ctx.fillStyle = ctx.strokeStyle;
    ctx.fillText("worker " + s.id, pad + 8 + 62 * (Number(s.id) % 8), h - 4);
  });
  canvas.dataset.points = String(points);
  canvas.dataset.max = String(max);
}

function drawCharts() {
  drawChart($("chart-connections"), (i, id) => {
    const worker = samples[i].workers[id];
    return worker ? worker.connections : null;
  });
  drawChart($("chart-messages"), (i, id) => {
    if (i === 0) return null;
    const before = samples[i - 1].workers[id], now = samples[i].workers[id];
    if (!before || !now) return null;
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    if (dt <= 0) return null;
    const delta = now.packets >= before.packets ? now.packets - before.packets : now.packets;
    return delta / dt;
  });
}

function showEvent(event) {
  const item = document.createElement("li");
  item.dataset.kind = event.kind;
  const when = document.createElement("span");
  when.textContent = new Date(event.at_ms).toLocaleTimeString() + " ";
  const kind = document.createElement("span");
  kind.className = "kind kind-" + event.kind;
  kind.textContent = event.kind;
  const what = document.createElement("span");
  const who = event.worker == null ? "" : " worker " + event.worker;
  const pid = event.pid == null ? "" : " (pid " + event.pid + ")";
  what.textContent = who + pid + ": " + event.message;
  item.append(when, kind, what);
  if (event.lines && event.lines.length) {
    const lines = document.createElement("pre");
    lines.textContent = event.lines.join("\n");
    item.appendChild(lines);
  }
  const list = $("events");
  list.insertBefore(item, list.firstChild);
  // The newest log line (the event's own) is the last: show the end of the box.
  item.querySelectorAll("pre").forEach((pre) => { pre.scrollTop = pre.scrollHeight; });
  while (list.children.length > 100) list.removeChild(list.lastChild);
}

function onMessage(name, data) {
  if (name === "snapshot") {
    record(data);
    showWorkers(data);
    drawCharts();
  } else if (name === "recent") {
    $("events").replaceChildren();
    data.forEach(showEvent);
  } else if (name === "event") {
    showEvent(data);
  }
}

// Reads the feed until it ends, then tries again.
async function follow() {
  const state = $("feed-state");
  for (;;) {
    try {
      const response = await fetch("/api/feed", { headers: authHeaders(), cache: "no-store" });
      if (!response.ok) {
        state.textContent = response.status === 401 ? "enter the admin token" : "feed refused (" + response.status + ")";
        state.className = "state down";
      } else {
        state.textContent = "live";
        state.className = "state live";
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let name = "message", data = "";
            block.split("\n").forEach((line) => {
              if (line.startsWith("event: ")) name = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            });
            if (data) onMessage(name, JSON.parse(data));
          }
        }
        state.textContent = "reconnecting…";
        state.className = "state down";
      }
    } catch (error) {
      state.textContent = "master unreachable";
      state.className = "state down";
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function act(path) {
  const result = $("action-result");
  result.textContent = path.slice(5) + "…";
  try {
    const response = await fetch(path, { method: "POST", headers: authHeaders() });
    const text = await response.text();
    let message = text;
    try {
      const body = JSON.parse(text);
      message = body.message || body.error || text;
    } catch (_) { /* plain text refusal */ }
    result.textContent = message.trim();
  } catch (error) {
    result.textContent = "failed: " + error;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  loadToken();
  $("save-token").addEventListener("click", () => {
    token = $("token").value.trim();
    sessionStorage.setItem("chatctl-admin-token", token);
  });
  $("reload").addEventListener("click", () => act("/api/reload"));
  $("restart").addEventListener("click", () => {
    // Unlike a reload, a restart leaves each worker's place empty for a moment.
    if (confirm("Restart stops each worker before starting it again (clients reconnect). Restart?")) {
      act("/api/restart");
    }
  });
  $("instances").addEventListener("input", () => { $("instances").dataset.edited = "1"; });
  $("scale").addEventListener("click", () => {
    const n = Number($("instances").value);
    act("/api/scale?instances=" + encodeURIComponent(String(n)));
  });
  follow();
});
