"""Scripts evaluated inside pages. Working on the live DOM keeps JS-rendered content, and a
single evaluate per read keeps a page's worth of text off the driver pipe until it is small."""

# Readable text as Markdown, plus links. Walks the main content (main/article when the page
# marks one), skips what is hidden or not text, renders form controls so a model can name
# them in fill/click, and stops once max_chars is reached so a huge DOM costs no more.
READ = r"""
({maxChars, maxLinks}) => {
  const SKIP = new Set(["SCRIPT","STYLE","NOSCRIPT","TEMPLATE","SVG","CANVAS","IFRAME","OBJECT",
                        "EMBED","HEAD","LINK","META","AUDIO","VIDEO","MAP"]);
  const BLOCK = new Set(["P","DIV","SECTION","ARTICLE","MAIN","HEADER","FOOTER","NAV","ASIDE","FORM",
                         "FIELDSET","FIGURE","FIGCAPTION","DL","DT","DD","ADDRESS","DETAILS","SUMMARY",
                         "CENTER","BODY","TR","CAPTION"]);
  const CONTROLS = new Set(["INPUT","TEXTAREA","SELECT","BUTTON"]);
  const out = [];
  let size = 0, truncated = false;
  const push = (s) => {
    if (truncated) return;
    if (size + s.length > maxChars) { s = s.slice(0, Math.max(0, maxChars - size)); truncated = true; }
    out.push(s); size += s.length;
  };
  const hidden = (el) => el.hidden || el.getAttribute("aria-hidden") === "true" ||
                         (el.checkVisibility && !el.checkVisibility());
  const clean = (s) => s.replace(/\s+/g, " ");
  const inline = (node) => {
    let s = "";
    for (const c of node.childNodes) {
      if (c.nodeType === 3) { s += clean(c.nodeValue); continue; }
      if (c.nodeType !== 1 || SKIP.has(c.tagName) || hidden(c)) continue;
      const t = c.tagName, inner = inline(c).trim();
      if (t === "A" && c.href && /^https?:/.test(c.href) && inner) s += `[${inner}](${c.href})`;
      else if ((t === "B" || t === "STRONG") && inner) s += ` **${inner}** `;
      else if ((t === "I" || t === "EM") && inner) s += ` *${inner}* `;
      else if (t === "CODE" && inner) s += "`" + inner + "`";
      else if (t === "BR") s += "\n";
      else if (t === "IMG") { if (c.alt) s += `![${clean(c.alt)}]`; }
      else if (CONTROLS.has(t)) s += " " + control(c) + " ";
      else s += inline(c);
    }
    return s.replace(/ +/g, " ");
  };
  const control = (el) => {
    const t = el.tagName.toLowerCase(), name = el.name ? ` name="${el.name}"` : "", id = el.id ? ` id="${el.id}"` : "";
    if (t === "button") return `[button${name}${id}: ${clean(el.innerText || "").trim()}]`;
    if (t === "select") return `[select${name}${id}: ${[...el.options].slice(0, 20).map(o => o.text.trim()).join(" | ")}]`;
    const type = el.type || "text";
    if (type === "hidden") return "";
    if (type === "submit" || type === "button") return `[button${name}${id}: ${el.value || type}]`;
    const label = el.labels && el.labels[0] ? ` label="${clean(el.labels[0].innerText).trim()}"` : "";
    return `[${t} type=${type}${name}${id}${label}]`;
  };
  const block = (el, depth) => {
    if (truncated) return;
    for (const c of el.childNodes) {
      if (truncated) return;
      if (c.nodeType === 3) { const s = clean(c.nodeValue).trim(); if (s) push(s + "\n\n"); continue; }
      if (c.nodeType !== 1 || SKIP.has(c.tagName) || hidden(c)) continue;
      const t = c.tagName;
      if (/^H[1-6]$/.test(t)) { const s = inline(c).trim(); if (s) push("#".repeat(+t[1]) + " " + s + "\n\n"); }
      else if (t === "UL" || t === "OL") list(c, depth);
      else if (t === "PRE") push("```\n" + c.innerText.replace(/\n+$/, "") + "\n```\n\n");
      else if (t === "BLOCKQUOTE") { const s = inline(c).trim(); if (s) push("> " + s + "\n\n"); }
      else if (t === "HR") push("---\n\n");
      else if (t === "TABLE") table(c);
      else if (CONTROLS.has(t)) { const s = control(c); if (s) push(s + "\n\n"); }
      else if (BLOCK.has(t) || t === "LI" || hasBlockChild(c)) block(c, depth);
      else { const s = inline(c).trim(); if (s) push(s + "\n\n"); }
    }
  };
  const hasBlockChild = (el) => [...el.children].some(c => BLOCK.has(c.tagName) || /^(H[1-6]|UL|OL|TABLE|PRE)$/.test(c.tagName));
  const list = (el, depth) => {
    let n = 1;
    for (const li of el.children) {
      if (truncated) return;
      if (li.tagName !== "LI" || hidden(li)) continue;
      const bullet = el.tagName === "OL" ? `${n++}.` : "-";
      const own = [...li.childNodes].filter(c => !(c.nodeType === 1 && (c.tagName === "UL" || c.tagName === "OL")));
      const text = own.map(c => c.nodeType === 3 ? clean(c.nodeValue) : (c.nodeType === 1 && !SKIP.has(c.tagName) ? inline({childNodes: [c]}) : "")).join("").replace(/ +/g, " ").trim();
      if (text) push("  ".repeat(depth) + bullet + " " + text + "\n");
      for (const sub of li.children) if (sub.tagName === "UL" || sub.tagName === "OL") list(sub, depth + 1);
    }
    if (depth === 0) push("\n");
  };
  const table = (el) => {
    const rows = [...el.rows].slice(0, 200).map(r => [...r.cells].map(c => inline(c).trim().replace(/\|/g, "\\|")));
    if (!rows.length) return;
    const width = Math.max(...rows.map(r => r.length));
    rows.forEach((r, i) => {
      push("| " + r.concat(Array(width - r.length).fill("")).join(" | ") + " |\n");
      if (i === 0) push("|" + " --- |".repeat(width) + "\n");
    });
    push("\n");
  };
  const mains = document.querySelectorAll("main, [role=main], article");
  const root = mains.length === 1 && mains[0].innerText.trim().length > 200 ? mains[0] : document.body;
  if (root) block(root, 0);
  const links = [], seen = new Set();
  let linksTotal = 0;
  for (const a of document.querySelectorAll("a[href]")) {
    const href = a.href.split("#")[0];
    if (!/^https?:/.test(href) || seen.has(href)) continue;
    seen.add(href); linksTotal++;
    if (links.length < maxLinks) links.push({url: href, text: clean(a.innerText || a.title || "").trim().slice(0, 120)});
  }
  return {title: document.title || "", text: out.join("").replace(/\n{3,}/g, "\n\n").trim(),
          truncated, links, links_total: linksTotal};
}
"""

# Field extraction: `spec` maps names to {sel, xpath, attr, many, fields}; returns raw strings
# (or nested objects / lists) for Python to coerce. XPath runs with the parent match as
# context node, so `.//x` stays inside it.
EXTRACT = r"""
(spec) => {
  const find = (root, f) => {
    if (f.xpath) {
      const r = document.evaluate(f.sel, root, null, XPathResult.ORDERED_NODE_SNAPSHOT_TYPE, null);
      const nodes = [];
      for (let i = 0; i < r.snapshotLength && nodes.length < 500; i++) nodes.push(r.snapshotItem(i));
      return nodes;
    }
    return [...root.querySelectorAll(f.sel)].slice(0, 500);
  };
  const value = (node, attr) => {
    if (node.nodeType === 2 || node.nodeType === 3) return node.nodeValue;
    if (!attr) return (node.innerText ?? node.textContent ?? "").trim().slice(0, 10000);
    if (attr === "html") return node.innerHTML.slice(0, 10000);
    if (["href", "src", "action", "value", "checked"].includes(attr) && attr in node) return String(node[attr]);
    return node.getAttribute(attr);
  };
  const run = (root, fields) => {
    const out = {};
    for (const [name, f] of Object.entries(fields)) {
      const nodes = find(root, f);
      const vals = f.fields ? nodes.map(n => run(n, f.fields)) : nodes.map(n => value(n, f.attr));
      out[name] = f.many ? vals : (vals.length ? vals[0] : null);
    }
    return out;
  };
  return run(document, spec);
}
"""

# Pages must not reach the network around the proxy: WebRTC talks UDP straight to any address.
NO_WEBRTC = r"""
for (const name of ["RTCPeerConnection", "webkitRTCPeerConnection", "RTCDataChannel", "RTCIceTransport"]) {
  try { Object.defineProperty(window, name, {value: undefined, configurable: false}); } catch (e) {}
}
"""
