// The dashboard: draws what /offer/circuit/events says, and drives the demo.
"use strict";

const $ = (id) => document.getElementById(id);
const STATES = ["closed", "open", "half-open"];
const COLORS = { hot: "#2e9d55", cold: "#e6a117", not_permitted: "#d64541" };

// One plain sentence per state, for someone who has never seen a circuit breaker.
const MEANINGS = {
  closed: ": the partner is called, and its failures are counted.",
  open: ": the partner is not called; everyone gets the cold offer.",
  "half-open": ": one trial call tests the partner; everyone else gets the cold offer.",
};
// The fallback reasons the Fire summary can meet, in the legend's words.
const REASONS = {
  "circuit-open": "not permitted: the circuit is open",
  "trial-in-flight": "not permitted, trial in flight: another request was the half-open trial call",
  "cut-short": "cut short: waiting on the partner when the circuit opened, so ended at once",
  "partner-timeout": "the partner took longer than PARTNER_TIMEOUT",
  "partner-connection-error": "the partner could not be reached",
  "local-resource-exhausted": "this service was out of connections; not counted against the partner",
};

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
  $("state-meaning").textContent = MEANINGS[state] ?? "";
  // A message about the circuit ("circuit: open") is stale once the circuit is in another state.
  // Compared with the state it reported, not the last one drawn: the stream's transition to that
  // very state often arrives after the admin call's answer.
  const reported = $("message").dataset.state;
  if (reported && state !== reported) say("", "info");
}

// The status line, coloured by what it says: done (green), refused or failed (red), asked (grey).
function say(text, kind, state = "") {
  const message = $("message");
  message.textContent = text;
  message.className = kind;
  message.dataset.state = state;
}

function render(snapshot) {
  light(snapshot.current_state);
  renderPolicy(snapshot);
  $("storage").textContent = snapshot.storage;
  $("degraded").hidden = !snapshot.degraded;
  $("wait-label").textContent = `after ${formatSeconds(snapshot.reset_timeout)}:`;
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
  const failures = (n) => `${n} ${n === 1 ? "failure" : "failures"}`;
  $("policy").textContent = `policy: consecutive, ${snapshot.fail_max} failures in a row`;
  $("trip-label").textContent = `${failures(snapshot.fail_max)} in a row`;
  $("fail-counter").textContent = snapshot.fail_counter;
  $("fail-max").textContent = snapshot.fail_max;
  const filled = Math.min(1, snapshot.fail_counter / snapshot.fail_max);
  $("fail-bar").style.width = `${filled * 100}%`;
  // "N of 3 before the circuit opens" means something only while it is closed.
  const closed = snapshot.current_state === "closed";
  $("fail-line").hidden = !closed;
  const note = $("fail-note");
  note.hidden = closed;
  if (closed) return;
  // Concurrent calls can fail past fail_max: they were sent before the circuit opened.
  const past =
    snapshot.fail_counter > snapshot.fail_max
      ? ` ${snapshot.fail_counter} of ${snapshot.fail_max}: a failed trial counts one more.`
      : "";
  note.textContent =
    `The circuit opened at failure ${snapshot.fail_max} in a row.${past} Calls already on their way ` +
    "to the partner may fail after that: they get the cold offer and are not counted. " +
    "Counting starts again when the circuit closes.";
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
    countdown.textContent = "";
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

// A scale a reader can take numbers from: a round top, three lines, "30 s ago" to "now".
function niceTop(peak) {
  const step = 10 ** Math.floor(Math.log10(peak));
  return [1, 2, 5, 10].map((m) => m * step).find((top) => top >= peak);
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
  const top = niceTop(peak);
  const left = 44;
  const bottom = height - 18;
  const plotHeight = bottom - 6;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7385";
  ctx.strokeStyle = "#e1e5ec";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const share of [0, 0.5, 1]) {
    const y = bottom - share * plotHeight;
    ctx.beginPath();
    ctx.moveTo(left, y + 0.5);
    ctx.lineTo(width, y + 0.5);
    ctx.stroke();
    ctx.fillText(`${Number((top * share).toFixed(1))}/s`, left - 6, y);
  }
  ctx.textBaseline = "alphabetic";
  ctx.textAlign = "left";
  ctx.fillText("30 s ago", left, height - 3);
  ctx.textAlign = "right";
  ctx.fillText("now", width, height - 3);

  const slot = (width - left) / 30;
  for (let i = 0; i < 30; i++) {
    const r = bySecond.get(now - 29 + i);
    if (!r) continue;
    let y = bottom;
    for (const key of ["hot", "cold", "not_permitted"]) {
      const h = (r[key] / top) * plotHeight;
      ctx.fillStyle = COLORS[key];
      ctx.fillRect(left + i * slot + 1, y - h, slot - 2, h);
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
    say("This action needs the admin token.", "info");
    return;
  }
  const answer = await response.json().catch(() => ({}));
  if (response.ok) say(done(answer), "ok", answer.current_state ?? "");
  else say(answer.detail || `failed: ${response.status}`, "error");
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

// The tally in the legend's words: hot, cold, not permitted; then why, in words.
async function fire() {
  const count = Math.max(1, Math.min(500, Number($("count").value) || 1));
  const tally = { hot: 0, cold: 0, "not permitted": 0 };
  const reasons = {};
  await Promise.all(
    Array.from({ length: count }, async () => {
      const response = await fetch("/offer", { cache: "no-store" });
      const outcome = response.headers.get("x-call-outcome");
      const kind = outcome === "success" ? "hot" : outcome === "not-permitted" ? "not permitted" : "cold";
      tally[kind] += 1;
      const reason = response.headers.get("x-fallback-reason");
      if (reason) reasons[reason] = (reasons[reason] || 0) + 1;
    }),
  );
  const counts = Object.entries(tally).map(([kind, n]) => `${n} ${kind}`).join(", ");
  $("fired").textContent = `${count} sent: ${counts}`;
  const why = Object.entries(reasons).map(([reason, n]) => {
    const item = document.createElement("li");
    const status = reason.match(/^partner-status-(\d+)$/);
    item.textContent = `${n} ${REASONS[reason] ?? (status ? `the partner answered ${status[1]}` : reason)}`;
    return item;
  });
  $("fired-why").replaceChildren(...why);
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
