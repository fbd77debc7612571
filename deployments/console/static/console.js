// Shared helpers: calls to the /v1 API with the session cookie, and the CSRF token that
// every state-changing call must carry (the server checks it against the session).
"use strict";

window.troupe = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) { window.location.assign("/console/signin"); throw new Error("signed out"); }
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      const why = (data && (data.detail || data.title)) || `HTTP ${r.status}`;
      const err = new Error(why);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  // Elements built from data only through textContent: nothing from a task becomes markup.
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("data-") || k.startsWith("aria-") || ["href", "title", "type", "download", "role",
        "colspan", "id", "for", "tabindex", "hidden", "datetime"].includes(k)) node.setAttribute(k, v === true ? "" : v);
      else node[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  return { csrf, api, el };
})();
