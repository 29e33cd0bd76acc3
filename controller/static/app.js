// The controller's dashboard: fleet list with rollouts (#/) and device page (#/device/ID); no build step, charts in
// inline SVG; the form that starts a rollout is rollout_form.js (loaded first).
"use strict";

const REFRESH_MS = 5000;
const view = document.getElementById("view");
const statusLine = document.getElementById("status");

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function fmt(value, digits = 2) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }
const STALE_S = 60;  // an online device silent this long is flagged: its telemetry or state stopped arriving
const BUSY = new Set(["pending", "downloading", "verifying", "loading", "checking"]);
// One vocabulary for states, with a colour each: serving (green), busy (amber), failed (red, with its reason).
function stateCell(m) {
  const state = m.state === "downloading" && m.progress ? `downloading ${Math.round(m.progress * 100)}%` : m.state;
  const cls = m.state === "failed" ? "state-failed" : BUSY.has(m.state) ? "state-busy" : `state-${m.state}`;
  const reason = m.reason?.message ? oneLine(m.reason.message) : "";
  const why = reason ? ` <span class="reason" title="${esc(m.reason.message)}">${esc(m.reason.code)}: ${esc(reason)}</span>` : "";
  return `<span class="state ${cls}">${esc(state)}</span>${why}`;
}
function oneLine(text, max = 140) {
  const line = String(text).split("\n")[0];
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}
function presence(d) {
  const silent = d.last_seen ? Date.now() / 1000 - d.last_seen : Infinity;
  if (!d.online) return `<span class="off">offline</span>`;
  return silent > STALE_S ? `<span class="stale" title="no message for ${ago(d.last_seen)}">online, stale</span>` : `<span class="on">online</span>`;
}
function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  return s < 120 ? `${s.toFixed(0)}s ago` : `${(s / 60).toFixed(0)}m ago`;
}
// A controller started with an API token answers 401 until the page sends it: the page asks once and keeps the
// token in this browser's localStorage ("edgeToken"); open the page as /#token=TOKEN to set it without the prompt.
const TOKEN_KEY = "edgeToken";
(function tokenFromHash() {
  const m = location.hash.match(/[#&]token=([^&]+)/);
  if (m) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.hash.replace(/[#&]token=[^&]+/, "").replace(/^&/, "#"));
  }
})();
let tokenAsked = false;  // ask at most once per page load (a cancelled prompt does not come back every refresh)
async function getJson(path, retried = false) {
  const token = localStorage.getItem(TOKEN_KEY);
  const r = await fetch(path, token ? { headers: { Authorization: `Bearer ${token}` } } : {});
  if (r.status === 401 && !retried && !tokenAsked) {
    tokenAsked = true;
    const given = window.prompt("This controller needs its API token (kept in this browser's localStorage):");
    if (given) {
      localStorage.setItem(TOKEN_KEY, given.trim());
      return getJson(path, true);
    }
  }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

// One SVG line chart: series = [{name, color, points: [[t, v], ...]}].
function lineChart(id, title, unit, series) {
  const W = 460, H = 180, L = 44, R = 10, T = 10, B = 22;
  const all = series.flatMap((s) => s.points).filter((p) => p[1] !== null && p[1] !== undefined);
  let body = "";
  if (all.length === 0) {
    body = `<text x="${W / 2 - 30}" y="${H / 2}">no data yet</text>`;
  } else {
    const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
    const vmax = Math.max(...all.map((p) => p[1])) * 1.1 || 1;
    const x = (t) => L + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - L - R) : (W - L - R) / 2);
    const y = (v) => T + (1 - v / vmax) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = (vmax * i) / 4;
      body += `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#eef0f3"/>`;
      body += `<text x="2" y="${y(v) + 3}">${v.toPrecision(3)}</text>`;
    }
    body += `<text x="${L}" y="${H - 6}">${new Date(t0 * 1000).toLocaleTimeString()}</text>`;
    body += `<text x="${W - R - 50}" y="${H - 6}">${new Date(t1 * 1000).toLocaleTimeString()}</text>`;
    series.forEach((s, i) => {
      const pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
      if (pts.length === 0) return;
      const d = pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      body += `<polyline class="series" data-series="${esc(s.name)}" fill="none" stroke="${s.color}" stroke-width="1.5" points="${d}"/>`;
      if (pts.length === 1) body += `<circle cx="${x(pts[0][0])}" cy="${y(pts[0][1])}" r="3" fill="${s.color}"/>`;
      body += `<text x="${L + 8 + i * 90}" y="${T + 10}" style="fill:${s.color}">${esc(s.name)}</text>`;
    });
  }
  return `<div class="chart"><h3>${esc(title)} <span class="muted">(${esc(unit)})</span></h3>` +
    `<svg id="${id}" width="100%" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${body}</svg></div>`;
}

async function fleetPage() {
  const devices = await getJson("/api/v1/telemetry");
  const rows = devices.map((d) => {
    const t = d.telemetry || {};
    const res = t.resources || {};
    const models = (t.models || []);
    const modelCells = d.models.map((m) => {
      const tm = models.find((x) => x.name === m.name) || {};
      const q = tm.quality || {};  // a class mix or an input that moved: its PSI (a softmax's pooled mean stays 1/K)
      const how = q.flagged ? `PSI ${fmt(q.score, 2)}` : `${fmt(tm.drift_score, 1)}σ`;
      const drift = tm.drifting ? ` <span class="drift">drift ${how}</span>` : "";
      return `${esc(m.name)}@${esc(m.serving?.version ?? m.version)} ${stateCell(m)} ${esc(m.backend ?? "")}` +
        ` p50 ${fmt(tm.p50_ms)} p95 ${fmt(tm.p95_ms)} ms ${fmt(tm.requests_per_s, 1)}/s${drift}`;
    }).join("<br>") || "–";
    return `<tr class="device-row" data-device="${esc(d.id)}"><td><a href="#/device/${encodeURIComponent(d.id)}">${esc(d.id)}</a></td>` +
      `<td>${presence(d)}</td><td>${modelCells}</td>` +
      `<td>${fmt(res.cpu_percent, 0)}%</td><td>${fmt(res.mem_percent, 0)}%</td><td>${fmt(res.temperature_c, 0)}</td>` +
      `<td>${ago(d.last_seen)}</td></tr>`;
  }).join("");
  const list = await rolloutsSection();
  if (!document.getElementById("fleet-part")) {  // built once: the start form keeps what was typed across refreshes
    view.innerHTML = `<div id="fleet-part"></div><section id="rollouts"><h2>Rollouts</h2>${rolloutForm()}` +
      `<div id="rollout-list"></div></section>`;
    setUpRolloutForm();  // rollout_form.js
  }
  document.getElementById("fleet-part").innerHTML = `<h2>Fleet <span class="muted">${devices.length} device(s)</span></h2>` +
    `<table id="fleet"><tr><th>device</th><th>state</th><th>models</th><th>CPU</th><th>memory</th><th>°C</th><th>last seen</th></tr>${rows}</table>`;
  document.getElementById("rollout-list").innerHTML = list;
}

// Rollouts (docs/rollouts.md; started from rollout_form.js's form): the newest few, each wave with its state and the
// gates' figures per hardware class.
async function rolloutsSection() {
  const listed = (await getJson("/api/v1/rollouts")).slice(-5).reverse();
  if (!listed.length) return `<p class="muted">No rollout yet.</p>`;
  const blocks = await Promise.all(listed.map(async (r) => {
    const full = await getJson(`/api/v1/rollouts/${encodeURIComponent(r.id)}`);
    const waves = full.waves.map((w) => {
      const classes = Object.entries(w.classes || {}).map(([c, g]) =>
        `${esc(c)}: <b>${esc(g.verdict)}</b> p95× ${fmt(g.latency?.median_p95_ratio)}` +
        ` err+ ≥ ${fmt(g.errors?.increase_lower_pct)} pts agree ${fmt(g.agreement?.agreement)}` +
        ` (${Object.entries(g).filter(([, v]) => v && v.verdict && v.verdict !== "pass")
          .map(([k, v]) => `${esc(k)} ${esc(v.verdict)}`).join(", ") || "every gate passed"})`).join("<br>") || "–";
      return `<tr><td>${w.index + 1} (${esc(w.step)})</td><td>${esc(w.state)}</td><td>${w.devices.length}</td><td>${classes}</td></tr>`;
    }).join("");
    return `<h3 class="rollout" data-rollout="${esc(full.id)}">${esc(full.id)} ${esc(full.model)}@${esc(full.version)}` +
      ` <b>${esc(full.state)}</b> <span class="muted">${esc(oneLine(full.reason || ""))}</span></h3>` +
      `<table><tr><th>wave</th><th>state</th><th>devices</th><th>gates per class</th></tr>${waves}</table>`;
  }));
  return blocks.join("");
}

async function devicePage(id) {
  const [device, tel] = await Promise.all([
    getJson(`/api/v1/devices/${encodeURIComponent(id)}`),
    getJson(`/api/v1/devices/${encodeURIComponent(id)}/telemetry?since=1h`),
  ]);
  const samples = tel.samples;
  const colors = ["#1f6feb", "#d97706", "#138a36", "#8b5cf6", "#b3261e"];
  const names = [...new Set(samples.flatMap((s) => (s.models || []).map((m) => m.name)))];
  const latency = names.flatMap((name, i) => [
    { name: `${name} p50`, color: colors[(2 * i) % colors.length], points: samples.map((s) => [s.ts, (s.models.find((m) => m.name === name) || {}).p50_ms]) },
    { name: `${name} p95`, color: colors[(2 * i + 1) % colors.length], points: samples.map((s) => [s.ts, (s.models.find((m) => m.name === name) || {}).p95_ms]) },
  ]);
  const rps = names.map((name, i) => ({ name, color: colors[i % colors.length], points: samples.map((s) => [s.ts, (s.models.find((m) => m.name === name) || {}).requests_per_s]) }));
  const res = (key) => samples.map((s) => [s.ts, (s.resources || {})[key]]);
  const latest = device.telemetry || { models: [] };
  const modelRows = device.models.map((m) => {
    const tm = latest.models.find((x) => x.name === m.name) || {};
    const q = tm.quality || {};
    const moved = q.flagged ? ` ${esc((q.moved || []).slice(0, 2).join("; "))} (PSI ${fmt(q.score, 2)})` : "";
    const drift = tm.drifting ? `<span class="drift">drifting${moved || ` (${fmt(tm.drift_score, 1)}σ)`}</span>` :
      (q.state ? esc(q.state) : (tm.drift ? "ok" : "–"));
    return `<tr class="model-row" data-model="${esc(m.name)}"><td>${esc(m.name)}</td><td>${esc(m.version)}</td><td>${stateCell(m)}</td><td>${esc(m.backend ?? "")}</td>` +
      `<td>${esc(m.serving?.version ?? "–")}</td><td>${esc(m.previous?.version ?? "–")}</td>` +
      `<td>${fmt(tm.p50_ms)} / ${fmt(tm.p95_ms)} / ${fmt(tm.p99_ms)}</td><td>${fmt(tm.requests_per_s, 1)}</td><td>${drift}</td></tr>`;
  }).join("");
  const hw = device.hardware || {};
  view.innerHTML = `<h2 id="device-title">${esc(device.id)} ${presence(device)}</h2>` +
    `<p class="muted">${esc(hw.arch ?? "?")}, ${esc(hw.cores ?? "?")} cores, agent ${esc(device.agent_version)}, last seen ${ago(device.last_seen)}, ${samples.length} sample(s) in the last hour</p>` +
    `<table id="models"><tr><th>model</th><th>target</th><th>state</th><th>backend</th><th>serving</th><th>previous</th><th>p50 / p95 / p99 ms</th><th>req/s</th><th>drift</th></tr>${modelRows}</table>` +
    `<div class="charts">` +
    lineChart("latency-chart", "Latency", "ms", latency) +
    lineChart("rps-chart", "Throughput", "requests/s", rps) +
    lineChart("cpu-chart", "CPU and memory", "%", [
      { name: "CPU", color: colors[0], points: res("cpu_percent") },
      { name: "memory", color: colors[1], points: res("mem_percent") },
    ]) +
    lineChart("temp-chart", "Temperature", "°C", [{ name: "hottest", color: colors[4], points: res("temperature_c") }]) +
    `</div>`;
}

async function render() {
  const hash = location.hash || "#/";
  try {
    const m = hash.match(/^#\/device\/(.+)$/);
    if (m) await devicePage(decodeURIComponent(m[1]));
    else await fleetPage();
    statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.rendered = String(Date.now());
  } catch (err) {
    statusLine.textContent = `error: ${err.message}`;
  }
}

window.addEventListener("hashchange", render);
render();
setInterval(render, REFRESH_MS);
