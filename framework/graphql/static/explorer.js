// Eventfold's GraphQL explorer: plain DOM, no dependencies, and no request but to this server.
"use strict";

const ENDPOINT = location.pathname.replace(/\/explorer\/?$/, "");  // the page is served at <graphql path>/explorer
const INTROSPECTION = `query Explorer {
  __schema {
    queryType { name }
    types { kind name description
      fields { name description args { name type { ...Ref } defaultValue } type { ...Ref } }
      inputFields { name description type { ...Ref } defaultValue }
      enumValues { name description }
      possibleTypes { name }
    }
  }
}
fragment Ref on __Type { kind name ofType { kind name ofType { kind name ofType { kind name } } } }`;

const $ = (id) => document.getElementById(id);
const saved = ["query", "variables", "authorization", "position", "headers"];

function restore() {
  for (const id of saved) {
    const value = localStorage.getItem("eventfold.explorer." + id);
    if (value !== null) $(id).value = value;
  }
}

function remember() {
  for (const id of saved) localStorage.setItem("eventfold.explorer." + id, $(id).value);
}

function parseObject(text, what) {
  const trimmed = text.trim();
  if (!trimmed) return {};
  const value = JSON.parse(trimmed);
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error(what + " must be a JSON object");
  return value;
}

function requestHeaders() {
  const headers = {"Content-Type": "application/json", "Accept": "application/graphql-response+json, application/json;q=0.9"};
  Object.assign(headers, parseObject($("headers").value, "Other headers"));
  const token = $("authorization").value.trim();
  if (token) headers["Authorization"] = /^bearer\s/i.test(token) ? token : "Bearer " + token;
  const position = $("position").value.trim();
  if (position) headers["Eventfold-Position"] = position;
  return headers;
}

async function post(query, variables, operationName) {
  const response = await fetch(ENDPOINT, {
    method: "POST", headers: requestHeaders(), credentials: "same-origin",
    body: JSON.stringify({query, variables, operationName}),
  });
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch (error) { body = text; }
  return {status: response.status, ok: response.ok, body};
}

function show(status, body, bad) {
  $("status").textContent = status;
  $("status").className = bad ? "bad" : "";
  $("result").textContent = typeof body === "string" ? body : JSON.stringify(body, null, 2);
}

async function run() {
  remember();
  show("running…", "", false);
  try {
    const variables = parseObject($("variables").value, "Variables");
    const started = performance.now();
    const answer = await post($("query").value, variables, null);
    const took = Math.round(performance.now() - started);
    const bad = !answer.ok || (answer.body && answer.body.errors);
    show(`HTTP ${answer.status} · ${took} ms`, answer.body, bad);
  } catch (error) {
    show("not sent", String(error.message || error), true);
  }
}

function typeName(ref) {
  if (!ref) return "";
  if (ref.kind === "NON_NULL") return typeName(ref.ofType) + "!";
  if (ref.kind === "LIST") return "[" + typeName(ref.ofType) + "]";
  return ref.name;
}

function namedType(ref) {
  return ref && ref.ofType ? namedType(ref.ofType) : ref && ref.name;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function typeLink(ref) {
  const link = element("span", "type-ref", typeName(ref));
  link.addEventListener("click", () => {
    const target = document.querySelector(`details[data-type="${CSS.escape(namedType(ref))}"]`);
    if (target) { target.open = true; target.scrollIntoView({block: "nearest"}); }
  });
  return link;
}

function fieldLine(field, withArgs) {
  const line = element("div", "field");
  line.append(element("span", "", field.name));
  if (withArgs && field.args && field.args.length) {
    line.append("(");
    field.args.forEach((arg, index) => {
      if (index) line.append(", ");
      line.append(arg.name + ": ", typeLink(arg.type));
    });
    line.append(")");
  }
  line.append(": ", typeLink(field.type));
  if (field.description) line.append(element("div", "doc", field.description));
  return line;
}

function renderSchema(schema) {
  const holder = $("types");
  holder.textContent = "";
  const root = schema.queryType && schema.queryType.name;
  const types = schema.types.filter((t) => !t.name.startsWith("__"))
    .sort((a, b) => (b.name === root) - (a.name === root) || a.name.localeCompare(b.name));
  for (const type of types) {
    const box = element("details");
    box.dataset.type = type.name;
    if (type.name === root) box.open = true;
    const summary = element("summary");
    summary.append(element("span", "", type.name + " "), element("span", "kind", type.kind.toLowerCase()));
    box.append(summary);
    if (type.description) box.append(element("div", "doc", type.description));
    for (const field of type.fields || []) box.append(fieldLine(field, true));
    for (const field of type.inputFields || []) box.append(fieldLine(field, false));
    for (const value of type.enumValues || []) box.append(element("div", "field", value.name));
    for (const member of type.possibleTypes || []) box.append(element("div", "field", "| " + member.name));
    holder.append(box);
  }
  filterSchema();
}

function filterSchema() {
  const wanted = $("filter").value.trim().toLowerCase();
  for (const box of $("types").children) {
    box.hidden = Boolean(wanted) && !box.textContent.toLowerCase().includes(wanted);
  }
}

async function loadSchema() {
  const holder = $("types");
  holder.textContent = "loading…";
  try {
    const answer = await post(INTROSPECTION, {}, "Explorer");
    if (answer.body && answer.body.data && answer.body.data.__schema) {
      renderSchema(answer.body.data.__schema);
    } else {
      const errors = answer.body && answer.body.errors;
      holder.textContent = "No schema: " + (errors ? errors.map((e) => e.message).join("; ") : "HTTP " + answer.status) +
        " (introspection is off on this server unless EVENTFOLD_GRAPHQL_INTROSPECTION=true)";
    }
  } catch (error) {
    holder.textContent = "No schema: " + (error.message || error);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("endpoint").textContent = "POST " + ENDPOINT;
  restore();
  $("run").addEventListener("click", run);
  $("reload").addEventListener("click", loadSchema);
  $("filter").addEventListener("input", filterSchema);
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") { event.preventDefault(); run(); }
  });
  loadSchema();
});
