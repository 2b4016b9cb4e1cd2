// avwarden dashboard: live updates from /api/v1/events and acknowledging alerts. Built into
// the binary; no library. Every fragment is rendered by the server: this only re-fetches.
"use strict";

// Which fragments an event makes stale.
const TILE_KINDS = new Set([
  "health_changed", "fault_raised", "fault_cleared", "link_up", "link_down",
  "identity_reported", "self_test_finished", "booking_started", "booking_ended",
  "speaker_protection_engaged", "speaker_protection_released", "speaker_protection_saturated",
  "zone_metering_lost", "zone_metering_restored", "alert_changed", "not_ready_at_deadline",
  "device_swapped", "maintenance_recorded",
]);
const BOARD_KINDS = new Set([
  "self_test_finished", "not_ready_at_deadline", "booking_started", "booking_ended",
]);

const pending = new Map();

function say(text) {
  const s = document.getElementById("action-status") || document.getElementById("live-status");
  if (s) s.textContent = text;
}

// Re-fetches one fragment, coalescing a burst of events into one request.
function refresh(el) {
  if (!el || pending.has(el)) return;
  pending.set(el, setTimeout(async () => {
    pending.delete(el);
    try {
      const r = await fetch(el.dataset.fragment, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (r.redirected && new URL(r.url).pathname === "/login") { location.assign("/login"); return; }
      if (!r.ok) return;
      const html = await r.text();
      // Keep keyboard focus on the same control when its fragment is replaced.
      const focused = document.activeElement && el.contains(document.activeElement) ? document.activeElement.id || document.activeElement.dataset.alert : null;
      el.innerHTML = html;
      if (el.classList.contains("tile")) {
        el.classList.remove("good", "warn", "bad", "neutral");
        const badge = el.querySelector(".state .badge");
        if (badge) el.classList.add([...badge.classList].find((c) => c !== "badge"));
      }
      if (focused) {
        const again = document.getElementById(focused) || el.querySelector(`[data-alert="${focused}"]`);
        if (again) again.focus();
      }
    } catch (_) { /* the stream's reconnect brings the next refresh */ }
  }, 150));
}

function refreshAll() {
  document.querySelectorAll("[data-fragment]").forEach(refresh);
}

function onEvent(kind, data) {
  if (TILE_KINDS.has(kind) && data.room) {
    document.querySelectorAll(`.tile[data-room="${CSS.escape(data.room)}"]`).forEach(refresh);
  }
  if (kind.startsWith("alert_")) refresh(document.getElementById("alerts"));
  if (BOARD_KINDS.has(kind)) refresh(document.getElementById("board"));
}

function listen() {
  const status = document.getElementById("live-status");
  if (!document.querySelector("[data-fragment]") || !window.EventSource) {
    // Pages without live parts (a device, the logbook) show the state when they were loaded.
    if (status) status.textContent = "Live updates: on the board and room pages";
    return;
  }
  const kinds = [...new Set([...TILE_KINDS, ...BOARD_KINDS, "alert_notified"])].join(",");
  const es = new EventSource(`/api/v1/events?kinds=${kinds}`);
  es.onopen = () => { if (status) status.textContent = "Live updates: on"; };
  es.onerror = () => { if (status) status.textContent = "Live updates: reconnecting…"; };
  for (const kind of new Set([...TILE_KINDS, ...BOARD_KINDS, "alert_notified"])) {
    es.addEventListener(kind, (e) => {
      try { onEvent(kind, JSON.parse(e.data)); } catch (_) { refreshAll(); }
    });
  }
  // Missed events (a lag, or ids the daemon no longer keeps): everything may be stale.
  es.addEventListener("lagged", refreshAll);
  es.addEventListener("reset", refreshAll);
}

async function acknowledge(button) {
  const id = button.dataset.alert;
  button.disabled = true;
  const headers = { "Content-Type": "application/json" };
  const csrf = sessionStorage.getItem("avwarden_csrf");
  if (csrf) headers["X-CSRF-Token"] = csrf;
  try {
    const r = await fetch(`/api/v1/alerts/${encodeURIComponent(id)}/ack`, {
      method: "POST", credentials: "same-origin", headers, body: "{}",
    });
    if (r.ok) {
      say(`Alert ${id} acknowledged.`);
    } else {
      const body = await r.json().catch(() => ({}));
      say(`Alert ${id} not acknowledged: ${body.detail || r.status}`);
      if (r.status === 401 || body.error === "csrf") location.assign("/login");
    }
  } finally {
    button.disabled = false;
    refresh(document.getElementById("alerts"));
  }
}

async function login(form) {
  const error = document.getElementById("login-error");
  error.textContent = "";
  const token = form.querySelector("#token").value;
  const r = await fetch("/api/v1/session", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { error.textContent = body.detail || "Sign-in failed."; return; }
  // The CSRF token is not a credential on its own: the session cookie is HttpOnly.
  if (body.csrf_token) sessionStorage.setItem("avwarden_csrf", body.csrf_token);
  location.assign("/");
}

async function logout() {
  const headers = {};
  const csrf = sessionStorage.getItem("avwarden_csrf");
  if (csrf) headers["X-CSRF-Token"] = csrf;
  await fetch("/api/v1/session", { method: "DELETE", credentials: "same-origin", headers }).catch(() => {});
  sessionStorage.removeItem("avwarden_csrf");
  location.assign("/login");
}

document.addEventListener("click", (e) => {
  const ack = e.target.closest("button.ack");
  if (ack) acknowledge(ack);
  if (e.target.closest("#logout")) logout();
});
document.addEventListener("submit", (e) => {
  if (e.target.id === "login") { e.preventDefault(); login(e.target); }
});
document.addEventListener("DOMContentLoaded", listen);
