// The dashboard's "Start a rollout" form (docs/rollouts.md): a version already in the registry, to the devices a
// selector picks, in waves with gates. It POSTs /api/v1/rollouts the body `edgectl rollout start` sends, with the
// page's token (localStorage "edgeToken", as app.js's getJson); "Dry run" shows the plan and changes nothing.
// Loaded after app.js (uses its esc, fmt, oneLine, TOKEN_KEY and render).
"use strict";

// StartRequest's defaults (controller/api/routes/rollouts.py), shown in the form; the browser test compares them.
const ROLLOUT_DEFAULTS = {
  waves: "1,10%,50%,100%", bake_s: 600, activate_timeout_s: 600, max_p95_ratio: 1.1, max_error_delta: 0.5,
  min_agreement: "", min_requests: 200, on_fail: "revert-wave", seed: "", name: "",
};
let registry = [];  // GET /api/v1/models: every registered version

function rolloutForm() {
  const d = ROLLOUT_DEFAULTS;
  const field = (key, label, title, attrs = "") =>
    `<label title="${esc(title)}">${esc(label)} <input name="${key}" value="${esc(d[key])}" ${attrs}></label>`;
  const num = 'type="number" step="any" min="0"';
  return `<details id="rollout-start"><summary>Start a rollout</summary><form id="rollout-form" autocomplete="off">` +
    `<p class="muted">A version already in the registry (a new file: <code>edgectl push FILE --name NAME --version V</code>` +
    ` first, or <code>edgectl rollout start FILE …</code>); the form does not upload files.</p>` +
    `<div class="form-row"><label>model <select name="model"></select></label>` +
    `<label>version <select name="version"></select></label>` +
    `<label title="KEY=VALUE pairs, all must hold (empty: every device)">select <input name="select" placeholder="site=lab arch=aarch64" size="28"></label>` +
    field("name", "rollout name", "optional", 'placeholder="optional"') + `</div>` +
    `<div class="form-row">${field("waves", "waves", "cumulative counts or shares of the selected devices", 'size="16"')}` +
    field("bake_s", "bake s", "seconds of evidence per wave after activation", num) +
    field("activate_timeout_s", "activate timeout s", "seconds a device gets to serve the version", num) +
    field("seed", "seed", "seed of the device order (empty: random)", 'type="number" step="1" placeholder="random"') + `</div>` +
    `<div class="form-row">${field("max_p95_ratio", "max p95 ratio", "median over devices of p95 new/old, at most", num)}` +
    field("max_error_delta", "max error delta (points)", "error-rate increase, 95% bound, at most", num) +
    field("min_agreement", "min agreement", "shadow-check agreement on live inputs, at least (empty: no gate)",
      'type="number" step="any" min="0" max="1" placeholder="off"') +
    field("min_requests", "min requests", "inferences per device before a wave can pass", 'type="number" step="1" min="1"') +
    `<label title="gate: no quality drift from the previous version"><input type="checkbox" name="no_new_drift"> no new drift</label>` +
    `<label title="what a failed gate does">on fail <select name="on_fail">` +
    ["halt", "revert-wave", "revert-all"].map((v) => `<option${v === d.on_fail ? " selected" : ""}>${v}</option>`).join("") +
    `</select></label></div>` +
    `<div class="form-row"><button type="button" id="rollout-dry-run">Dry run</button>` +
    `<button type="button" id="rollout-submit">Start</button> <span id="rollout-error" class="reason"></span></div>` +
    `<div id="rollout-result"></div></form></details>`;
}

// The body `edgectl rollout start` sends (edgectl/commands/rollout.py): numbers as numbers, empty optionals null;
// a value that is not a number goes as typed, so the API says what is wrong with it.
function rolloutBody(form, dryRun) {
  const v = (key) => form.elements[key].value.trim();
  const number = (key) => (v(key) === "" ? null : Number.isNaN(Number(v(key))) ? v(key) : Number(v(key)));
  return {
    model: v("model"), version: v("version"), name: v("name"),
    select: v("select").split(/[\s,]+/).filter(Boolean), waves: v("waves"),
    bake_s: number("bake_s"), activate_timeout_s: number("activate_timeout_s"), max_p95_ratio: number("max_p95_ratio"),
    max_error_delta: number("max_error_delta"), min_agreement: number("min_agreement"),
    min_requests: number("min_requests"), no_new_drift: form.elements.no_new_drift.checked,
    on_fail: v("on_fail"), seed: number("seed"), dry_run: dryRun,
  };
}

// One line for an API error: its code and reason ({"error": {code, message}}, or FastAPI's 422 {"detail": [...]}).
async function apiError(r) {
  let body = {};
  try { body = await r.json(); } catch (_) { /* not JSON: the status says it */ }
  if (body.error) return `HTTP ${r.status} ${body.error.code}: ${oneLine(body.error.message, 300)}`;
  if (Array.isArray(body.detail)) {
    const what = body.detail.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
    return `HTTP ${r.status} invalid_request: ${oneLine(what, 300)}`;
  }
  return `HTTP ${r.status} ${r.statusText}`;
}

async function postJson(path, body) {
  const token = localStorage.getItem(TOKEN_KEY);
  const headers = { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) };
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(await apiError(r));
  return r.json();
}

function showPlan(plan) {
  const waves = plan.waves.map((w) => {
    const classes = Object.entries(w.classes).filter(([, n]) => n).map(([c, n]) => `${esc(c)}: ${n}`).join(", ");
    return `<tr class="plan-wave"><td>${w.index + 1} (${esc(w.step)})</td><td>${w.devices.length}</td><td>${classes}</td>` +
      `<td class="devices">${esc(w.devices.join(" "))}</td></tr>`;
  }).join("");
  const notes = [
    ...Object.entries(plan.incompatible).map(([d, why]) => `cannot take it: ${esc(d)}: ${esc(why)}`),
    ...Object.entries(plan.conflicts).map(([d, other]) => `in rollout ${esc(other)}: ${esc(d)}`),
  ].map((line) => `<li>${line}</li>`).join("");
  return `<p id="rollout-plan">Dry run: ${plan.devices} device(s), ${fmt(plan.bytes / (1 << 20), 1)} MiB to move, seed ` +
    `${esc(plan.seed)} (in the form: Start runs this plan). Nothing was changed.</p><table><tr><th>wave</th><th>devices</th><th>per class</th>` +
    `<th>device ids</th></tr>${waves}</table>${notes ? `<ul>${notes}</ul>` : ""}`;
}

async function submitRollout(dryRun) {
  const form = document.getElementById("rollout-form");
  const error = document.getElementById("rollout-error"), result = document.getElementById("rollout-result");
  error.textContent = "";
  result.innerHTML = "";
  try {
    const answer = await postJson("/api/v1/rollouts", rolloutBody(form, dryRun));
    if (dryRun) {
      form.elements.seed.value = answer.seed;  // Start then runs the very plan shown
      result.innerHTML = showPlan(answer);
      return;
    }
    result.innerHTML = `<p id="rollout-started" data-rollout="${esc(answer.id)}">Rollout <b>${esc(answer.id)}</b> ` +
      `started: ${esc(answer.model)}@${esc(answer.version)} to ${Object.keys(answer.devices).length} device(s) in ` +
      `${answer.waves.length} wave(s).</p>`;
    await render();
  } catch (err) {
    error.textContent = oneLine(err.message, 400);
  }
}

function fillVersions(form) {
  const versions = registry.filter((m) => m.name === form.elements.model.value).map((m) => m.version).reverse();
  form.elements.version.innerHTML = versions.map((v) => `<option>${esc(v)}</option>`).join("");
}

async function loadRegistry(form) {
  try {
    registry = await getJson("/api/v1/models");
  } catch (err) {
    document.getElementById("rollout-error").textContent = oneLine(err.message);
    return;
  }
  const chosen = form.elements.model.value;
  const names = [...new Set(registry.map((m) => m.name))];
  form.elements.model.innerHTML = names.map((n) => `<option${n === chosen ? " selected" : ""}>${esc(n)}</option>`).join("");
  fillVersions(form);
}

// Called once per fleet page built (app.js): the form keeps what was typed across the page's refreshes.
function setUpRolloutForm() {
  const form = document.getElementById("rollout-form");
  document.getElementById("rollout-start").addEventListener("toggle", (e) => e.target.open && loadRegistry(form));
  form.elements.model.addEventListener("change", () => fillVersions(form));
  document.getElementById("rollout-dry-run").addEventListener("click", () => submitRollout(true));
  document.getElementById("rollout-submit").addEventListener("click", () => submitRollout(false));
  form.addEventListener("submit", (e) => e.preventDefault());
}
