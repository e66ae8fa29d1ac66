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
// The session list: GET /sessions with the form's filters, one page at a
// time; each session links to its timeline at /timeline/{session_id}.
const form = document.getElementById("filters");
const rows = document.getElementById("rows");
const more = document.getElementById("more");
const error = document.getElementById("error");
// Requests carry the token in their Authorization header; links never do.
const token = pageToken();
const pageQuery = new URLSearchParams(window.location.search);
let cursor = null;

function filters() {
  const query = new URLSearchParams();
  const states = [];
  for (const input of form.elements) {
    if (!input.name || input.type === "submit") continue;
    if (input.type === "checkbox") {
      if (input.checked) states.push(input.value);
    } else if (input.value !== "") {
      query.set(input.name, input.value);
    }
  }
  if (states.length) query.set("state", states.join(","));
  return query;
}

function fillForm() {
  for (const input of form.elements) {
    if (!input.name) continue;
    const value = pageQuery.get(input.name);
    if (input.type === "checkbox") {
      input.checked = (pageQuery.get("state") || "").split(",").includes(input.value);
    } else if (value !== null) {
      input.value = value;
    }
  }
}

function shown(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function row(item) {
  const tr = document.createElement("tr");
  tr.className = "session";
  const link = document.createElement("a");
  link.href = "/timeline/" + encodeURIComponent(item.session_id);
  link.textContent = item.session_id;
  const id = document.createElement("td");
  id.appendChild(link);
  tr.appendChild(id);
  tr.appendChild(cell(item.state));
  tr.appendChild(cell(shown(item.start)));
  tr.appendChild(cell(shown(item.end)));
  tr.appendChild(cell(String(item.children)));
  tr.appendChild(cell(item.last_arrival ? new Date(item.last_arrival).toISOString() : "–"));
  const names = cell(item.names.join(", ") + (item.names_capped ? ", …" : ""));
  names.className = "names";
  tr.appendChild(names);
  return tr;
}

async function load(append) {
  const query = filters();
  if (append && cursor) query.set("cursor", cursor);
  error.textContent = "";
  let body;
  try {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch("/sessions?" + query.toString(), { headers });
    body = await response.json();
    if (!response.ok) {
      error.textContent = body.error ? body.error.code + ": " + body.error.message : response.statusText;
      more.hidden = true;
      return;
    }
  } catch (err) {
    error.textContent = "the api could not be reached: " + err;
    return;
  }
  if (!append) rows.replaceChildren();
  for (const item of body.sessions) rows.appendChild(row(item));
  cursor = body.next_cursor;
  more.hidden = !cursor;
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const query = filters();
  history.replaceState(null, "", "/timeline?" + query.toString());
  cursor = null;
  load(false);
});
more.addEventListener("click", () => load(true));
fillForm();
load(false);
