"use strict";
// An API key or token given to the page (`#token=…`, or `?token=…` from an
// older link) is kept in this tab's sessionStorage and taken out of the
// address bar at once, so it never stays in the history, in a link or in a
// Referer.
function pageToken() {
  const url = new URL(window.location.href);
  const fragment = new URLSearchParams(url.hash.slice(1));
  const given = fragment.get("token") ?? url.searchParams.get("token");
  if (given !== null) {
    sessionStorage.setItem("sessionfold.token", given);
    url.searchParams.delete("token");
    fragment.delete("token");
    const search = url.searchParams.toString();
    const hash = fragment.toString();
    history.replaceState(null, "", url.pathname + (search ? "?" + search : "") + (hash ? "#" + hash : ""));
  }
  return sessionStorage.getItem("sessionfold.token");
}
// The session comes from the path or the box. /data/stream sends the
// document once (event `document`), then each change (`delta`: children
// inserted at or removed from positions, and the bounds that moved) and
// the session's state (`state`); every event's id is the revision. The
// page keeps the document, applies each delta to it and to the list in
// place, and redraws the axis once per animation frame.
const $ = (id) => document.getElementById(id);
const prefix = "/timeline/";
let source = null;
// EventSource cannot send headers: the token goes in the stream's query.
const token = pageToken();

function sessionFromPath() {
  const path = window.location.pathname;
  if (!path.startsWith(prefix) || path.length <= prefix.length) return "";
  try {
    return decodeURIComponent(path.slice(prefix.length));
  } catch (err) {
    // The api answers such a path with 400; a page reached otherwise says
    // so instead of waiting forever.
    $("status").textContent = `The address holds a malformed percent-escape: ${path.slice(prefix.length)}`;
    document.body.dataset.error = "malformed_escape";
    return "";
  }
}

function fmt(value) { return value === null || value === undefined ? "–" : String(value); }

let doc = null;
let drawPending = false;

function childItem(child) {
  const li = document.createElement("li");
  li.className = "child";
  li.textContent = `${child.timestamp}  ${child.name ?? ""}`;
  return li;
}

function showBounds() {
  $("start").textContent = fmt(doc.start);
  $("end").textContent = fmt(doc.end);
  $("count").textContent = String(doc.children.length);
}

function drawAxis() {
  drawPending = false;
  if (!doc) return;
  const times = doc.children.map((c) => c.timestamp)
    .concat([doc.start, doc.end].filter((t) => t !== null));
  const lo = Math.min(...times), hi = Math.max(...times);
  const x = (t) => 20 + (hi === lo ? 480 : ((t - lo) / (hi - lo)) * 960);
  const svg = $("axis");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const line = document.createElementNS(ns, "line");
  Object.entries({ x1: 20, x2: 980, y1: 60, y2: 60, stroke: "#9aa3b5" })
    .forEach(([k, v]) => line.setAttribute(k, v));
  svg.appendChild(line);
  for (const [t, color] of [[doc.start, "#2f9e44"], [doc.end, "#e03131"]]) {
    if (t === null) continue;
    const mark = document.createElementNS(ns, "rect");
    Object.entries({ x: x(t) - 2, y: 20, width: 4, height: 80, fill: color })
      .forEach(([k, v]) => mark.setAttribute(k, v));
    svg.appendChild(mark);
  }
  doc.children.forEach((child, i) => {
    const dot = document.createElementNS(ns, "circle");
    Object.entries({ cx: x(child.timestamp), cy: 60 - 18 + (i % 3) * 18, r: 6, fill: "#3b5bdb" })
      .forEach(([k, v]) => dot.setAttribute(k, v));
    const title = document.createElementNS(ns, "title");
    title.textContent = `${child.name ?? child.type} @ ${child.timestamp}`;
    dot.appendChild(title);
    svg.appendChild(dot);
  });
}

function scheduleAxis() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(drawAxis);
}

// What the page took, for anyone checking it follows the deltas.
function count(kind) {
  const key = kind + "s";
  document.body.dataset[key] = String(Number(document.body.dataset[key] ?? 0) + 1);
}

function setRevision(event) {
  if (event.lastEventId) $("revision").textContent = event.lastEventId;
}

// A whole document: replaces what the page holds.
function onDocument(event) {
  doc = JSON.parse(event.data);
  $("children").replaceChildren(...doc.children.map(childItem));
  showBounds();
  setRevision(event);
  if ($("state").textContent === "–") $("state").textContent = "open";
  scheduleAxis();
  count("document");
}

// A delta: its changes in order, on the document and the list alike.
function onDelta(event) {
  if (!doc) return;
  const delta = JSON.parse(event.data);
  const list = $("children");
  for (const change of delta.changes) {
    if (change.remove !== undefined) {
      doc.children.splice(change.remove, 1);
      list.children[change.remove].remove();
    } else {
      doc.children.splice(change.insert, 0, ...change.children);
      const before = list.children[change.insert] ?? null;
      for (const child of change.children) list.insertBefore(childItem(child), before);
    }
  }
  if ("start" in delta) doc.start = delta.start;
  if ("end" in delta) doc.end = delta.end;
  showBounds();
  setRevision(event);
  scheduleAxis();
  count("delta");
}

function onState(event) {
  $("state").textContent = JSON.parse(event.data).state;
  count("state");
}

function follow(session) {
  if (source) source.close();
  $("session").value = session;
  if (!session) return;
  $("status").textContent = `Waiting for ${session}…`;
  const params = new URLSearchParams({ session_id: session });
  if (token) params.set("token", token);
  doc = null;
  $("state").textContent = "–";
  $("revision").textContent = "–";
  source = new EventSource(`/data/stream?${params}`);
  source.addEventListener("document", (event) => {
    onDocument(event);
    $("status").textContent = `Live: ${session}`;
  });
  source.addEventListener("delta", onDelta);
  source.addEventListener("state", onState);
  // The api ends a stream with an `end` event. After `max_lifetime` or
  // `too_slow` EventSource reconnects by itself; the other reasons do not
  // pass with a reconnect, so the page stops and says why.
  source.addEventListener("end", (event) => {
    const end = JSON.parse(event.data);
    if (end.reason === "max_lifetime" || end.reason === "too_slow") return;
    source.close();
    const why = end.error ? end.error.message : end.reason.replace(/_/g, " ");
    $("status").textContent = `Stopped following ${session}: ${why}`;
  });
  source.onerror = () => { $("status").textContent = `Reconnecting to ${session}…`; };
}

$("pick").addEventListener("submit", (event) => {
  event.preventDefault();
  const session = $("session").value.trim();
  history.pushState(null, "", prefix + encodeURIComponent(session) + window.location.search);
  follow(session);
});
window.addEventListener("popstate", () => follow(sessionFromPath()));
follow(sessionFromPath());
