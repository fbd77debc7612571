// The New task form's attachments: files dropped on the zone join the file input, so the
// form posts them (multipart) like files picked with the button.
"use strict";

(() => {
  const zone = document.getElementById("drop");
  const input = document.getElementById("files");
  const list = document.getElementById("file-list");
  if (!zone || !input) return;
  const { el } = window.troupe;

  function show() {
    list.replaceChildren(...[...input.files].map((f) => el("li", { "data-file": f.name, text: `${f.name} · ${f.size} bytes` })));
  }

  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    const all = new DataTransfer();
    for (const f of [...input.files, ...ev.dataTransfer.files]) all.items.add(f);
    input.files = all.files;
    show();
  });
  input.addEventListener("change", show);
})();
