// The demo page's client: validates input, caches titles, polls the ranking and updates
// optimistically. Everything that matters (auth, validation, rate limits, ranking) is the
// server's: the access token lives in an HTTP-only cookie this script cannot read.
"use strict";

const POLL_MS = 1000;
const TITLES_KEY = "embedstream-demo-titles-v1";
const USER_ID = /^[^\s\u0000-\u001f\u007f]{1,128}$/;

const state = { user: null, titles: {}, timer: null, pending: new Map() };
const $ = (id) => document.getElementById(id);

function showError(text) {
  $("error").textContent = text || "";
}

async function loadTitles() {
  const cached = localStorage.getItem(TITLES_KEY);
  if (cached) {
    try {
      state.titles = JSON.parse(cached);
      return;
    } catch (_) {
      localStorage.removeItem(TITLES_KEY);
    }
  }
  const response = await fetch("/demo/titles");
  if (response.ok) {
    state.titles = (await response.json()).titles || {};
    try {
      localStorage.setItem(TITLES_KEY, JSON.stringify(state.titles));
    } catch (_) {
      // Storage full or disabled: keep them in memory only.
    }
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    const error = body.error || {};
    return `${error.code || response.status}: ${error.message || ""}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

function eventId() {
  if (window.crypto && crypto.randomUUID) {
    return crypto.randomUUID();
  }
  return `demo-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

async function signIn(event) {
  event.preventDefault();
  const user = $("user").value.trim();
  if (!USER_ID.test(user)) {
    showError("A user id has 1 to 128 characters, without spaces.");
    return;
  }
  showError("");
  const response = await fetch("/demo/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: user }),
  });
  if (!response.ok) {
    showError(await errorText(response));
    return;
  }
  state.user = user;
  state.pending.clear();
  $("signout-button").hidden = false;
  $("meta-user").textContent = user;
  await loadTitles();
  await refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, POLL_MS);
}

async function signOut() {
  clearInterval(state.timer);
  state.user = null;
  await fetch("/demo/session", { method: "DELETE" });
  $("recs").hidden = true;
  $("signout-button").hidden = true;
  $("stale").classList.remove("shown");
}

async function refresh() {
  if (!state.user) {
    return;
  }
  const user = encodeURIComponent(state.user);
  let response;
  try {
    response = await fetch(`/v1/users/${user}/recommendations?k=10`, {
      credentials: "same-origin",
    });
  } catch (error) {
    showError(`The service cannot be reached: ${error}`);
    return;
  }
  if (response.status === 401) {
    clearInterval(state.timer);
    showError("The session expired: sign in again.");
    return;
  }
  if (!response.ok) {
    showError(await errorText(response));
    return;
  }
  showError("");
  render(await response.json(), response.headers.get("x-embedstream-stale") === "true");
}

function render(body, staleHeader) {
  $("recs").hidden = false;
  $("meta-source").textContent = body.source;
  $("meta-variant").textContent = body.variant;
  $("meta-updated").textContent = new Date().toLocaleTimeString();
  $("stale").classList.toggle("shown", Boolean(body.stale || staleHeader));
  const rows = body.items.map((item, index) => {
    const row = document.createElement("tr");
    row.dataset.itemId = item.item_id;
    if (state.pending.has(item.item_id)) {
      row.classList.add("pending");
    }
    const cells = [
      String(index + 1),
      state.titles[item.item_id] || `item ${item.item_id}`,
      item.score.toFixed(4),
    ];
    cells.forEach((text, column) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (column === 2) {
        cell.className = "score";
      }
      row.appendChild(cell);
    });
    const actions = document.createElement("td");
    for (const type of ["like", "view"]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = type;
      button.className = `act-${type}`;
      button.disabled = state.pending.has(item.item_id);
      button.addEventListener("click", () => send(type, item.item_id, row));
      actions.appendChild(button);
    }
    row.appendChild(actions);
    return row;
  });
  $("items").replaceChildren(...rows);
}

async function send(type, itemId, row) {
  // Optimistic: mark the item at once; the next rankings drop it once the fold applied it.
  state.pending.set(itemId, type);
  row.classList.add("pending");
  row.querySelectorAll("button").forEach((button) => (button.disabled = true));
  const response = await fetch("/v1/events", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      event_id: eventId(),
      user_id: state.user,
      item_id: itemId,
      event_type: type,
      ts: Date.now(),
    }),
  });
  if (!response.ok) {
    state.pending.delete(itemId);
    row.classList.remove("pending");
    row.querySelectorAll("button").forEach((button) => (button.disabled = false));
    showError(await errorText(response));
  }
}

$("signin").addEventListener("submit", signIn);
$("signout-button").addEventListener("click", signOut);
