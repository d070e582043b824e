// The dashboard: draws what /offer/circuit/events says, and drives the demo.
"use strict";

const $ = (id) => document.getElementById(id);
const STATES = ["closed", "open", "half-open"];
const COLORS = { hot: "#2e9d55", cold: "#e6a117", not_permitted: "#d64541" };

let snapshotAt = 0;
let secondsUntilTrial = null;
let pendingAction = null;

function connect() {
  const stream = new EventSource("/offer/circuit/events");
  stream.addEventListener("open", () => {
    $("stream").textContent = "live";
    $("stream").classList.add("live");
  });
  stream.addEventListener("error", () => {
    $("stream").textContent = "reconnecting…";
    $("stream").classList.remove("live");
  });
  stream.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  stream.addEventListener("transition", (event) => light(JSON.parse(event.data).to));
}

function light(state) {
  for (const name of STATES) $(`state-${name}`).classList.toggle("lit", name === state);
  $("state-text").textContent = state;
}

function render(snapshot) {
  light(snapshot.current_state);
  renderPolicy(snapshot);
  $("storage").textContent = snapshot.storage;
  $("degraded").hidden = !snapshot.degraded;
  secondsUntilTrial = snapshot.seconds_until_trial;
  snapshotAt = performance.now();
  drawChart(snapshot.recent);
  renderTransitions(snapshot.transitions);
}

// What trips the circuit: fail_max failures in a row (consecutive), or a share of the
// window's calls that failed or were slow (rate); each policy has its own part of the card.
function renderPolicy(snapshot) {
  const rated = snapshot.policy === "rate" && snapshot.window !== null;
  $("consecutive").hidden = rated;
  $("rates").hidden = !rated;
  if (rated) renderRates(snapshot.window);
  else renderFailCounter(snapshot);
}

function renderFailCounter(snapshot) {
  $("policy").textContent = `policy: consecutive, ${snapshot.fail_max} failures in a row`;
  $("trip-label").textContent = "fail_max failures";
  $("fail-counter").textContent = snapshot.fail_counter;
  $("fail-max").textContent = snapshot.fail_max;
  const filled = Math.min(1, snapshot.fail_counter / snapshot.fail_max);
  $("fail-bar").style.width = `${filled * 100}%`;
}

function renderRates(w) {
  const seconds = formatSeconds(w.seconds);
  $("policy").textContent = `policy: rate, over the last ${seconds}`;
  $("trip-label").textContent = "a rate at its threshold";
  // Below min_calls a rate of 100% (1 call, failed) trips nothing: the meters say so by greying.
  const counting = w.calls >= w.min_calls;
  rateMeter("failure-meter", w.failure_rate, w.failure_rate_threshold, counting);
  rateMeter("slow-meter", w.slow_call_rate, w.slow_call_rate_threshold, counting);
  $("failure-rate").textContent = `failure rate ${percent(w.failure_rate)} / ${percent(w.failure_rate_threshold)}`;
  $("slow-call-rate").textContent =
    `slow-call rate ${percent(w.slow_call_rate)} / ${percent(w.slow_call_rate_threshold)}` +
    ` (calls of ${formatSeconds(w.slow_call_seconds)} or more)`;
  const calls = `${w.calls} ${w.calls === 1 ? "call" : "calls"}`;
  $("window-calls").textContent = `${calls} in the last ${seconds}, rates count from ${w.min_calls}`;
}

// Widths through the CSSOM: the CSP forbids style attributes in markup, not element.style.
function rateMeter(id, rate, threshold, counting) {
  const meter = $(id);
  meter.querySelector(".fill").style.width = `${Math.min(1, rate ?? 0) * 100}%`;
  meter.querySelector(".threshold").style.left = `${threshold * 100}%`;
  meter.classList.toggle("idle", !counting);
  meter.classList.toggle("over", counting && rate !== null && rate >= threshold);
}

// Rounded down to a tenth of a percent, so that a rate just under its threshold (0.4996)
// never reads as the threshold itself (50%) while the circuit stays closed. null: no calls.
function percent(share) {
  if (share === null) return "–";
  return `${Math.floor(share * 1000 + 1e-9) / 10}%`;
}

function formatSeconds(seconds) {
  return `${Number(seconds.toFixed(2))} s`;
}

function tickCountdown() {
  const countdown = $("countdown");
  if (secondsUntilTrial === null) {
    countdown.hidden = true;
  } else {
    const left = Math.max(0, secondsUntilTrial - (performance.now() - snapshotAt) / 1000);
    countdown.hidden = false;
    countdown.textContent = left > 0 ? `next trial in ${left.toFixed(1)} s` : "next request is the trial";
  }
  requestAnimationFrame(tickCountdown);
}

function renderTransitions(transitions) {
  const list = $("transitions");
  const items = transitions.slice().reverse().map((t) => {
    const item = document.createElement("li");
    const time = new Date(t.at).toLocaleTimeString();
    item.textContent = `${time}  ${t.from ?? "start"} → ${t.to}`;
    return item;
  });
  list.replaceChildren(...items);
}

function drawChart(recent) {
  const canvas = $("chart");
  const scale = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = width * scale;
  canvas.height = height * scale;
  const ctx = canvas.getContext("2d");
  ctx.scale(scale, scale);
  ctx.clearRect(0, 0, width, height);

  const now = Math.floor(Date.now() / 1000);
  const bySecond = new Map(recent.map((r) => [r.t, r]));
  const totals = { hot: 0, cold: 0, not_permitted: 0 };
  let peak = 1;
  for (const r of recent) {
    peak = Math.max(peak, r.hot + r.cold + r.not_permitted);
    for (const key of Object.keys(totals)) totals[key] += r[key];
  }
  const slot = width / 30;
  for (let i = 0; i < 30; i++) {
    const r = bySecond.get(now - 29 + i);
    if (!r) continue;
    let y = height;
    for (const key of ["hot", "cold", "not_permitted"]) {
      const h = (r[key] / peak) * (height - 4);
      ctx.fillStyle = COLORS[key];
      ctx.fillRect(i * slot + 1, y - h, slot - 2, h);
      y -= h;
    }
  }
  for (const key of Object.keys(totals)) $(`total-${key}`).textContent = totals[key];
}

async function admin(method, url, body) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem("adminToken");
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { method, headers, body: body ? JSON.stringify(body) : undefined });
  if (response.status === 401) {
    pendingAction = () => admin(method, url, body);
    $("token-form").hidden = false;
    $("message").textContent = "This action needs the admin token.";
    return;
  }
  const answer = await response.json().catch(() => ({}));
  $("message").textContent = response.ok ? done(answer) : answer.detail || `failed: ${response.status}`;
}

// What an admin action changed, said back: the partner's chaos, or the circuit's state.
function done(answer) {
  if ("effective_status_code" in answer) {
    const latency = answer.latency ? `, +${answer.latency} s` : "";
    const mode = answer.mode && answer.mode !== "normal" ? `, ${answer.mode}` : "";
    return `partner: ${answer.effective_status_code}${latency}${mode}`;
  }
  return "current_state" in answer ? `circuit: ${answer.current_state}` : "";
}

async function fire() {
  const count = Math.max(1, Math.min(500, Number($("count").value) || 1));
  const tally = { partner: 0, fallback: 0 };
  const reasons = {};
  await Promise.all(
    Array.from({ length: count }, async () => {
      const response = await fetch("/offer", { cache: "no-store" });
      const source = response.headers.get("x-offer-source") || "fallback";
      tally[source] += 1;
      const reason = response.headers.get("x-fallback-reason");
      if (reason) reasons[reason] = (reasons[reason] || 0) + 1;
    }),
  );
  const why = Object.entries(reasons).map(([r, n]) => `${n} ${r}`).join(", ");
  $("fired").textContent = `${count} sent: ${tally.partner} hot, ${tally.fallback} cold${why ? ` (${why})` : ""}`;
}

function wire() {
  for (const id of ["break", "slow", "hang"]) {
    $(id).addEventListener("click", () => admin("PUT", "/partner/chaos", JSON.parse($(id).dataset.chaos)));
  }
  $("heal").addEventListener("click", () => admin("DELETE", "/partner/chaos"));
  $("fire").addEventListener("click", fire);
  $("force-open").addEventListener("click", () => admin("POST", "/offer/circuit/open"));
  $("force-close").addEventListener("click", () => admin("POST", "/offer/circuit/close"));
  $("reset").addEventListener("click", () => admin("POST", "/offer/circuit/reset"));
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("adminToken", $("token").value);
    $("token").value = "";
    $("token-form").hidden = true;
    if (pendingAction) pendingAction();
    pendingAction = null;
  });
}

wire();
connect();
requestAnimationFrame(tickCountdown);
