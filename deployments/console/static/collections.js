// Collections: upload files or a folder (multipart, with the session's CSRF token), follow
// the ingest job's progress over SSE, read its report, and search with sources shown.
"use strict";

(() => {
  const { api, csrf, el } = window.troupe;
  const $ = (id) => document.getElementById(id);
  let source = null;

  function showJob(job) {
    $("job").hidden = false;
    $("job-id").textContent = job.job_id;
    const status = $("job-status");
    status.textContent = job.status;
    status.className = `status s-${job.status}`;
    $("job").dataset.status = job.status;
    const p = job.progress || {};
    const bar = $("job-progress");
    bar.max = Math.max(1, p.files_seen || 0);
    bar.value = p.files_done || 0;
    const facts = $("job-facts");
    facts.replaceChildren();
    const fact = (k, v) => facts.append(el("div", {}, el("dt", { text: k }), el("dd", { text: String(v ?? 0) })));
    fact("Files", `${p.files_done || 0} of ${p.files_seen || 0} settled`);
    fact("Parsed", p.files_parsed);
    fact("Failed", p.files_failed);
    fact("Unchanged", p.files_unchanged);
    fact("Duplicates", p.files_duplicate);
    fact("Chunks stored", p.chunks_stored);
    const failures = job.report?.failures || [];
    $("job-failures").replaceChildren(...(failures.length ? [el("h4", { text: "Failures" }),
      el("ul", {}, ...failures.map((f) => el("li", {}, el("code", { text: f.source }), ` — ${f.reason}`)))] : []));
    if (job.error) $("job-failures").append(el("p", { class: "error", text: job.error }));
    if (job.status === "done") $("ingest-result").textContent = `Done: ${job.collection} is searchable.`;
    if (job.status === "failed") $("ingest-result").textContent = "The ingest job failed; see why above.";
  }

  function follow(jobId) {
    if (source) source.close();
    source = new EventSource(`/v1/ingest/${encodeURIComponent(jobId)}/events`);
    const on = (msg) => showJob(JSON.parse(msg.data));
    source.addEventListener("progress", on);
    for (const end of ["done", "failed"]) {
      source.addEventListener(end, (msg) => { on(msg); source.close(); source = null; });
    }
  }

  const ingest = $("ingest-form");
  if (ingest) {
    ingest.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = $("ingest-collection").value.trim();
      const files = [...$("ingest-files").files, ...$("ingest-folder").files];
      const out = $("ingest-result");
      if (!files.length) { out.textContent = "Choose files, archives or a folder first."; out.className = "error"; return; }
      const form = new FormData();
      for (const f of files) form.append("files", f, f.webkitRelativePath || f.name);
      out.textContent = `Uploading ${files.length} file(s)…`;
      out.className = "hint";
      const r = await fetch(`/v1/collections/${encodeURIComponent(name)}/ingest`, {
        method: "POST", body: form, credentials: "same-origin", headers: { "X-CSRF-Token": csrf() } });
      const body = await r.json().catch(() => null);
      if (!r.ok) { out.textContent = (body && body.detail) || `HTTP ${r.status}`; out.className = "error"; return; }
      out.textContent = `Ingesting into ${name}.`;
      showJob({ job_id: body.job_id, status: body.status, progress: {} });
      follow(body.job_id);
    });
  }

  $("search-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("search-collection").value.trim();
    const query = $("search-query").value.trim();
    const out = $("search-result");
    const list = $("passages");
    out.textContent = "Searching…";
    out.className = "hint";
    try {
      const body = await api(`/v1/collections/${encodeURIComponent(name)}/search`, { method: "POST", body: { query, limit: 8 } });
      const n = body.results.length;
      out.textContent = `${n} passage${n === 1 ? "" : "s"} for “${query}” in ${name}.`;
      out.className = "hint";
      list.replaceChildren(...body.results.map((p) => el("li", { "data-source": p.source },
        el("blockquote", { text: p.text }),
        el("p", { class: "hint" }, el("strong", { text: p.citation }), ` · score ${Number(p.score).toFixed(2)}`))));
    } catch (e) {
      out.textContent = e.message;
      out.className = "error";
      list.replaceChildren();
    }
  });
})();
