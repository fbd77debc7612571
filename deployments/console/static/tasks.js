// The tasks list stays live: its rows are re-rendered by the server every few seconds.
"use strict";

(() => {
  const table = document.querySelector("table.tasks");
  const body = document.getElementById("task-rows");
  const live = document.getElementById("live");
  if (!table || !body) return;
  const url = table.dataset.rowsUrl;
  const PERIOD_MS = 2000;

  async function refresh() {
    if (document.hidden) return;
    try {
      const r = await fetch(url, { credentials: "same-origin" });
      if (r.status === 401) { window.location.assign("/console/signin"); return; }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const html = await r.text();
      // The fragment is our own template's output (every value escaped by Jinja).
      if (html !== body.dataset.last) { body.innerHTML = html; body.dataset.last = html; }
      live.textContent = "live";
      live.classList.remove("stale");
    } catch (e) {
      live.textContent = "reconnecting…";
      live.classList.add("stale");
    }
  }
  body.dataset.last = body.innerHTML;
  setInterval(refresh, PERIOD_MS);
})();
