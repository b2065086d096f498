// The Eventfold operator console. It calls the operations API (/ops/...) with fetch, as any program would,
// and loads nothing from anywhere else. The bearer token, if one is needed, is kept in sessionStorage (this tab).
"use strict";

const TOKEN_KEY = "eventfold.console.token";
const POLL_MS = 2000;
const COLORS = ["#1a5fb4", "#c01c28", "#26a269", "#e66100", "#613583", "#986a44", "#0e7c86", "#a51d2d"];
let timer = null;
let chartMetric = 0; // 0: lag in events, 1: lag in seconds (the two figures of each sample)

// ---- small DOM helpers (text only: nothing from the server is ever parsed as HTML)
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}
function json(value) { return h("pre", {}, JSON.stringify(value, null, 2)); }
function main() { return document.getElementById("main"); }
function show(...nodes) { main().replaceChildren(...nodes); }
function notice(text, isError) {
  const p = document.getElementById("notice");
  p.textContent = text || "";
  p.hidden = !text;
  p.className = isError ? "error" : "";
}

// ---- the API, with the tab's token
class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}
async function api(path, options) {
  const headers = { "Accept": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = { method: "GET", headers, cache: "no-store" };
  if (options && options.body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401 || response.status === 403) {
      document.getElementById("token").focus();
      throw new ApiError(response.status, (body.detail || "refused") + " — give a bearer token with the role ops");
    }
    throw new ApiError(response.status, body.detail || ("HTTP " + response.status));
  }
  return body;
}
function failed(error) { notice(error.message || String(error), true); }

function confirmed(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// Re-run `work` every `ms` until the page changes. A refusal (no token, a token without the role, too many
// requests) stops it: polling on would only count failed authentications against this address.
function every(ms, work) {
  const run = () => work().then(() => notice("")).catch((error) => {
    if ([401, 403, 429].includes(error.status)) clearInterval(timer);
    failed(error);
  });
  timer = setInterval(run, ms);
  run();
}

// ---- Projections
function projectionRows(rows) {
  const columns = ["name", "version", "active", "state", "position", "head", "lag_events", "lag_seconds",
                   "dead_letters", "outbox_pending", "outbox_oldest_seconds", "deadlines_pending", "owner"];
  const titles = ["Projection", "Version", "Active", "State", "Position", "Head", "Lag (events)", "Lag (s)",
                  "Dead letters", "Outbox", "Oldest waiting (s)", "Deadlines", "Owner"];
  const body = [];
  for (const row of rows) {
    body.push(h("tr", { "data-projection": row.name, "data-version": row.version },
      columns.map((c) => h("td", { "data-field": c, class: c === "state" ? "state-" + row.state : (typeof row[c] === "number" ? "num" : null) },
        c === "owner" ? (row.owner || "-") : String(row[c])))));
    if (row.error) body.push(h("tr", {}, h("td", { colspan: columns.length, class: "state-halted" }, "error: " + row.error)));
    for (const part of partitionsOf(row)) {
      const text = Object.entries(part).map(([k, v]) => k + ": " + (v === null ? "-" : v)).join("  ·  ");
      body.push(h("tr", { class: "partition", "data-partition-of": row.name }, h("td", { colspan: columns.length }, text)));
    }
  }
  return h("table", { id: "projections" }, h("thead", {}, h("tr", {}, titles.map((t) => h("th", {}, t)))), h("tbody", {}, body));
}
function partitionsOf(row) {
  const parts = row.partitions;
  return Array.isArray(parts) ? parts.map((p) => (typeof p === "object" && p !== null ? p : { partition: p })) : [];
}

function lagChart(history) {
  const width = 900, height = 220, left = 50, bottom = 24;
  const now = history.now, start = now - 3600;
  const names = [...new Set(history.samples.flatMap((s) => Object.keys(s.lag)))].sort();
  const peak = Math.max(1, ...history.samples.flatMap((s) => Object.values(s.lag).map((v) => v[chartMetric])));
  const x = (t) => left + ((t - start) / 3600) * (width - left - 10);
  const y = (v) => height - bottom - (v / peak) * (height - bottom - 10);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", class: "chart", id: "lag-chart", role: "img" });
  chart.append(svg("line", { x1: left, y1: y(0), x2: width - 10, y2: y(0), stroke: "#999" }));
  chart.append(svg("line", { x1: left, y1: 10, x2: left, y2: y(0), stroke: "#999" }));
  for (const [label, at] of [[String(peak), y(peak)], ["0", y(0)]]) {
    const text = svg("text", { x: left - 6, y: at + 4, "text-anchor": "end", "font-size": 11 });
    text.textContent = label;
    chart.append(text);
  }
  for (const [label, t] of [["-60 min", start], ["-30 min", start + 1800], ["now", now]]) {
    const text = svg("text", { x: x(t), y: height - 6, "text-anchor": "middle", "font-size": 11 });
    text.textContent = label;
    chart.append(text);
  }
  names.forEach((name, i) => {
    const points = history.samples.filter((s) => s.t >= start && name in s.lag).map((s) => `${x(s.t).toFixed(1)},${y(s.lag[name][chartMetric]).toFixed(1)}`);
    if (points.length) chart.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-projection": name }));
  });
  const legend = h("p", { class: "legend" }, names.map((name, i) => {
    const swatch = h("i");
    swatch.style.background = COLORS[i % COLORS.length];
    return h("span", {}, swatch, name);
  }));
  return h("section", {}, h("p", { id: "chart-samples" }, String(history.samples.length), " samples, one every ", String(history.every_seconds), " s"), chart, legend);
}

function projectionsPage() {
  const table = h("div");
  const chart = h("div");
  const stamp = h("p", { id: "status-at" });
  const metric = h("select", { id: "chart-metric", onchange: (e) => { chartMetric = Number(e.target.value); } },
    h("option", { value: 0, selected: chartMetric === 0 }, "events behind"), h("option", { value: 1, selected: chartMetric === 1 }, "seconds behind"));
  show(h("h2", {}, "Projections"), stamp, table, h("h2", {}, "Lag over the last hour, in ", metric), chart);
  every(POLL_MS, async () => {
    const [status, history] = await Promise.all([api("/ops/status"), api("/ops/lag-history")]);
    stamp.textContent = "Head " + status.head + " · updated " + new Date(status.at).toLocaleTimeString();
    stamp.setAttribute("data-head", status.head);
    table.replaceChildren(projectionRows(status.projections));
    chart.replaceChildren(lagChart(history));
  });
}

// ---- Dead letters
function deadLettersPage() {
  const list = h("div");
  const detail = h("div", { id: "letter-detail" });
  show(h("h2", {}, "Dead letters"), h("div", { class: "split" }, list, detail));
  const load = async () => {
    const { dead_letters: letters } = await api("/ops/dead-letters");
    if (!letters.length) { list.replaceChildren(h("p", { id: "no-letters" }, "No dead letters.")); return; }
    list.replaceChildren(h("table", { id: "dead-letters" },
      h("thead", {}, h("tr", {}, ["Id", "Projection", "Position", "Event", "Failed at", "Error", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, letters.map((l) => h("tr", { "data-letter": l.id },
        h("td", { class: "num" }, l.id), h("td", {}, l.projection), h("td", { class: "num" }, l.position),
        h("td", {}, l.event_name), h("td", {}, l.failed_at || ""),
        h("td", { class: "error" }, l.error),
        h("td", {},
          h("button", { type: "button", class: "link", onclick: () => letterDetail(l, detail) }, "Show"), " ",
          h("button", { type: "button", "data-action": "retry", onclick: () => settle(l, "retry", load) }, "Retry"), " ",
          h("button", { type: "button", "data-action": "discard", onclick: () => settle(l, "discard", load) }, "Discard")))))));
  };
  every(POLL_MS, load);
}
async function letterDetail(letter, into) {
  const parts = [h("h3", {}, "Dead letter " + letter.id), h("p", {}, "Error: " + letter.error)];
  if (letter.command) parts.push(h("h4", {}, "Command"), json(letter.command));
  try {
    const event = await api("/ops/events/" + letter.position);
    parts.push(h("h4", {}, "Event " + event.type + " at " + event.position), h("h4", {}, "Data"), json(event.data),
      h("h4", {}, "Metadata"), json(event.metadata));
  } catch (error) { parts.push(h("p", {}, "Event: " + error.message)); }
  into.replaceChildren(...parts);
}
async function settle(letter, action, reload) {
  const words = action === "retry" ? "Retry dead letter " + letter.id + " (" + letter.event_name + " in " + letter.projection + ")? Its projection's worker runs it again."
                                   : "Discard dead letter " + letter.id + " (" + letter.event_name + " in " + letter.projection + ")? It is forgotten for good.";
  if (!(await confirmed(words))) return;
  try {
    const done = await api(`/ops/dead-letters/${letter.id}/${action}`, { body: {} });
    notice(done.message);
    await reload();
  } catch (error) { failed(error); }
}

// ---- Events: the global stream, one aggregate's stream, one correlation id
function eventTable(events) {
  return h("table", { id: "events" },
    h("thead", {}, h("tr", {}, ["Position", "Recorded at", "Type", "Aggregate", "Version", "Correlation", "Actor"].map((t) => h("th", {}, t)))),
    h("tbody", {}, events.map((e) => h("tr", { "data-position": e.position },
      h("td", { class: "num" }, h("button", { type: "button", class: "link", onclick: () => eventDetail(e) }, e.position)),
      h("td", {}, e.metadata.recorded_at || ""), h("td", {}, e.type),
      h("td", {}, h("a", { href: "#/stream/" + encodeURIComponent(e.aggregate_id) }, (e.aggregate_type || "") + " " + e.aggregate_id.slice(0, 8))),
      h("td", { class: "num" }, e.version),
      h("td", {}, e.metadata.correlation_id ? h("a", { href: "#/trail/" + encodeURIComponent(e.metadata.correlation_id), "data-correlation": e.metadata.correlation_id }, e.metadata.correlation_id) : ""),
      h("td", {}, e.metadata.actor || "")))));
}
function eventDetail(event) {
  const into = document.getElementById("event-detail");
  into.replaceChildren(h("h3", {}, event.type + " · position " + event.position),
    h("p", {}, "Aggregate ", h("a", { href: "#/stream/" + encodeURIComponent(event.aggregate_id) }, event.aggregate_id), " version " + event.version),
    h("h4", {}, "Data"), json(event.data), h("h4", {}, "Metadata"), json(event.metadata));
}
function eventsPage(params) {
  const field = (name, label, placeholder) => h("label", {}, label, h("input", { name, value: params.get(name) || "", placeholder }));
  const form = h("form", { class: "filters", id: "event-filters" },
    field("type", "Event types", "CorporateActionAnnounced,…"), field("since", "Since (UTC)", "2026-01-01T00:00"),
    field("until", "Until (UTC)", ""), field("correlation_id", "Correlation id", ""),
    field("aggregate_type", "Aggregate type", ""), h("button", { type: "submit" }, "Filter"));
  const aggregate = h("form", { class: "filters", id: "open-stream" },
    h("label", {}, "Aggregate (id or TYPE:KEY)", h("input", { name: "aggregate", placeholder: "Account:ACC-1001" })),
    h("button", { type: "submit" }, "Open stream"));
  const table = h("div"), pager = h("p", { id: "pager" });
  show(h("h2", {}, "Events"), form, aggregate, h("div", { class: "split" }, h("div", {}, table, pager), h("div", { id: "event-detail" })));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const query = new URLSearchParams([...new FormData(form)].filter(([, v]) => v));
    location.hash = "#/events?" + query.toString();
  });
  aggregate.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = "#/stream/" + encodeURIComponent(new FormData(aggregate).get("aggregate"));
  });
  const afters = [Number(params.get("after") || 0)];
  const load = async () => {
    const query = new URLSearchParams(params);
    query.set("after", afters[afters.length - 1]);
    query.set("limit", "25");
    const page = await api("/ops/events?" + query.toString());
    table.replaceChildren(page.events.length ? eventTable(page.events) : h("p", {}, "No events match."));
    const previous = h("button", { type: "button", disabled: afters.length < 2, onclick: () => { afters.pop(); load().catch(failed); } }, "← Previous");
    const next = h("button", { type: "button", id: "next-page", disabled: page.complete && page.next_after >= page.head,
      onclick: () => { afters.push(page.next_after); load().catch(failed); } }, "Next →");
    pager.replaceChildren(previous, " ", next, ` after position ${afters[afters.length - 1]} · head ${page.head}`);
  };
  load().catch(failed);
}
async function streamPage(aggregate) {
  show(h("h2", {}, "Stream of ", aggregate), h("div", { class: "split" }, h("div", { id: "stream" }), h("div", { id: "event-detail" })));
  try {
    const stream = await api("/ops/streams/" + encodeURIComponent(aggregate));
    main().querySelector("h2").textContent = "Stream of " + stream.described;
    document.getElementById("stream").replaceChildren(eventTable(stream.events));
  } catch (error) { failed(error); }
}
async function trailPage(correlation) {
  show(h("h2", {}, "Correlation ", correlation), h("div", { class: "split" }, h("div", { id: "trail" }), h("div", { id: "event-detail" })));
  try {
    const trail = await api("/ops/correlations/" + encodeURIComponent(correlation));
    const byPosition = new Map(trail.steps.flatMap((s) => s.events.map((e) => [e.position, e])));
    const steps = trail.steps.map((step, i) => {
      const cause = step.caused_by ? byPosition.get(step.caused_by) : null;
      const title = step.issued_by
        ? ["Command issued by process manager ", h("strong", {}, step.issued_by), cause ? [" because of ", h("button", { type: "button", class: "link", onclick: () => eventDetail(cause) }, cause.type + " #" + cause.position)] : ""]
        : ["Command sent by ", h("strong", {}, step.actor || "an anonymous caller"), step.causation_id ? " (request " + step.causation_id + ")" : ""];
      return h("div", { class: "step" + (step.issued_by ? " issued" : ""), "data-step": i, "data-issued-by": step.issued_by || "" },
        h("p", {}, title), h("ul", {}, step.events.map((e) => h("li", { "data-type": e.type, "data-position": e.position },
          h("button", { type: "button", class: "link", onclick: () => eventDetail(e) }, e.type), " on " + (e.aggregate_type || "") + " v" + e.version + " at #" + e.position))));
    });
    const issued = trail.issued.map((c) => {
      const cause = byPosition.get(c.caused_by);
      return h("div", { class: "step issued waiting", "data-command": c.command_name, "data-state": c.state },
        h("p", {}, `Command ${c.command_name} issued by process manager `, h("strong", {}, c.projection),
          cause ? [" because of ", h("button", { type: "button", class: "link", onclick: () => eventDetail(cause) }, cause.type + " #" + cause.position)] : ` because of #${c.caused_by}`,
          c.state === "pending" ? ` — not executed yet (${c.attempts} attempts${c.error ? ", last error: " + c.error : ""})` : ` — refused: ${c.error}`),
        json(c.payload));
    });
    const note = trail.complete ? "" : ` (searched up to position ${trail.scanned_to} of ${trail.head})`;
    document.getElementById("trail").replaceChildren(
      h("p", {}, `${trail.steps.length} commands wrote ${byPosition.size} events${note}`), ...steps,
      ...(issued.length ? [h("h3", {}, "Issued, without events yet")] : []), ...issued);
  } catch (error) { failed(error); }
}

// ---- Replays
function replaysPage() {
  const select = h("select", { name: "projection", id: "replay-projection" });
  const start = h("form", { class: "filters", id: "start-replay" }, h("label", {}, "Projection", select), h("button", { type: "submit" }, "Start blue-green rebuild"));
  const jobs = h("div", { id: "replay-jobs" }), versions = h("div", { id: "replay-versions" });
  show(h("h2", {}, "Replays"), start, jobs, h("h3", {}, "Versions"), versions);
  start.addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = select.value;
    if (!(await confirmed(`Rebuild ${name} from the event store into a new version, then switch queries to it?`))) return;
    try { await api("/ops/replays", { body: { projection: name } }); await load(); } catch (error) { failed(error); }
  });
  const load = async () => {
    const [replays, status] = await Promise.all([api("/ops/replays"), api("/ops/status")]);
    if (!select.options.length) select.replaceChildren(...replays.projections.map((p) => h("option", { value: p }, p)));
    jobs.replaceChildren(replays.replays.length ? h("table", { id: "replays" },
      h("thead", {}, h("tr", {}, ["#", "Projection", "From version", "State", "Progress", "New version", "Started", "Finished", "Error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, replays.replays.slice().reverse().map((j) => h("tr", { "data-replay": j.id, "data-state": j.state },
        h("td", {}, j.id), h("td", {}, j.projection), h("td", {}, j.from_version), h("td", { class: "state-" + j.state }, j.state),
        h("td", {}, h("progress", { max: Math.max(j.head, 1), value: j.state === "switched" ? Math.max(j.head, 1) : j.position }), ` ${j.position}/${j.head}`),
        h("td", { "data-field": "version" }, j.version ?? ""), h("td", {}, j.started_at), h("td", {}, j.finished_at || ""), h("td", {}, j.error || "")))))
      : h("p", {}, "No rebuild started from this server yet."));
    versions.replaceChildren(projectionRows(status.projections));
  };
  every(1000, load);
}

// ---- routing: #/page?query
function route() {
  clearInterval(timer);
  notice("");
  const [path, query] = (location.hash.slice(1) || "/projections").split("?");
  const params = new URLSearchParams(query || "");
  const [, page, argument] = path.split("/");
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.page === page || (page === "stream" || page === "trail") && link.dataset.page === "events");
  if (page === "dead-letters") deadLettersPage();
  else if (page === "events") eventsPage(params);
  else if (page === "stream") streamPage(decodeURIComponent(argument || ""));
  else if (page === "trail") trailPage(decodeURIComponent(argument || ""));
  else if (page === "replays") replaysPage();
  else projectionsPage();
}

function setUpToken() {
  const input = document.getElementById("token");
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (input.value.trim()) sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    route();
  });
  document.getElementById("token-clear").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); input.value = ""; route(); });
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => { setUpToken(); route(); });
