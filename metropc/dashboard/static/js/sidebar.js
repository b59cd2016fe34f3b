// The sidebar: the tree of views, the action buttons, the parameters and
// the errors; and the inputs table.  Everything is rebuilt only when its
// content changes (a signature is compared), so index messages at several
// per second cost little.

import { request } from "./connection.js";
import { addPanel, viewTitle } from "./panel.js";
import { S, saveLayout } from "./state.js";
import { el, fmtRate, outputName } from "./util.js";

function buildTree(views) {
  const root = { folders: new Map(), leaves: [] };
  for (const v of views) {
    const parts = v.name.split("/");
    let node = root, path = "";
    for (const part of parts.slice(0, -1)) {
      path = path ? `${path}/${part}` : part;
      if (!node.folders.has(part)) node.folders.set(part, { path, folders: new Map(), leaves: [] });
      node = node.folders.get(part);
    }
    node.leaves.push({ v, short: parts[parts.length - 1] });
  }
  return root;
}

export function renderTree() {
  const tree = document.getElementById("tree");
  const views = [...S.views.values()].filter(v => !v.hidden || S.layout.showHidden);
  const signature = views.map(v => `${v.name}|${v.output}|${v.hint}|${v.stage}|${v.hidden}|${viewTitle(v)}`).join("\n")
    + JSON.stringify(S.layout.collapsed);
  if (tree.dataset.signature !== signature) {
    tree.dataset.signature = signature;
    const build = node => {
      const out = [];
      for (const [name, f] of [...node.folders.entries()].sort()) {
        const folder = el("div", { class: "folder" + (S.layout.collapsed[f.path] ? " collapsed" : ""), "data-folder": f.path },
          el("div", { class: "row", onclick: () => { S.layout.collapsed[f.path] = !S.layout.collapsed[f.path]; saveLayout(); renderTree(); } },
            el("span", { class: "name", text: name + "/" })),
          el("div", { class: "children" }, ...build(f)));
        out.push(folder);
      }
      for (const { v, short } of node.leaves.sort((p, q) => p.short.localeCompare(q.short))) {
        const compute = v.output === "COMPUTE";
        const title = viewTitle(v);
        out.push(el("div", {
          class: "row leaf" + (compute ? " compute" : "") + (v.hidden ? " hidden-view" : ""),
          "data-view": v.name, title: (title ? title + "\n" : "") + `${v.name}: ${outputName(v)}, stage ${v.stage}`
            + (compute ? " (not published)" : "\nclick to show it in a new panel"),
          onclick: compute ? null : () => addPanel({ view: v.name }) },
          el("span", { class: "name", text: short }),
          el("span", { class: "badge", text: outputName(v) }),
          v.stage === "ACTION" ? el("span", { class: "badge act", text: "ACTION" }) : null,
          el("span", { class: "fill" }),
          el("span", { class: "stat counts" }), el("span", { class: "stat rate" }),
          el("span", { class: "badge err errors" })));
      }
      return out;
    };
    tree.replaceChildren(...(views.length ? build(buildTree(views)) : [el("p", { class: "muted", text: "no views" })]));
  }
  for (const row of tree.querySelectorAll(".leaf")) {
    const v = S.views.get(row.dataset.view);
    if (!v) continue;
    row.querySelector(".counts").textContent = String(v.counts);
    row.querySelector(".rate").textContent = `${fmtRate(v.rate)}/s`;
    const err = row.querySelector(".errors");
    err.textContent = v.errors ? `${v.errors} err` : "";
    err.style.display = v.errors ? "" : "none";
  }
}

export function renderActions() {
  const box = document.getElementById("actions");
  const actions = [...S.views.values()].filter(v => v.stage === "ACTION").map(v => v.name).sort();
  const enabled = !!(S.control && S.control.enabled);
  const signature = actions.join("\n") + "|" + enabled;
  if (box.dataset.signature === signature) return;
  box.dataset.signature = signature;
  if (!actions.length) { box.replaceChildren(el("p", { class: "muted", text: "no ACTION views" })); return; }
  box.replaceChildren(...actions.map(name => {
    const result = el("span", { class: "result" });
    const button = el("button", { type: "button", "data-action": name, disabled: !enabled,
      title: enabled ? `run the ACTION view ${name}` : (S.control ? S.control.note : "read-only"),
      onclick: async () => {
        button.disabled = true; result.textContent = "…";
        const r = await request({ op: "action", view: name });
        result.textContent = r.ok ? "✓" : r.message; button.disabled = false;
        result.title = r.message || "";
      } }, "▶ " + name);
    return el("span", {}, button, " ", result);
  }));
}

export function renderInputs() {
  const t = document.getElementById("inputs");
  t.replaceChildren(...S.index.paths.map(p => el("tr", {},
    el("td", { text: p.path }), el("td", { class: "n", text: String(p.counts) }),
    el("td", { class: "n", text: `${fmtRate(p.rate)}/s` }))));
}

export function renderParams(msg) {
  const box = document.getElementById("params");
  const params = msg.parameters;
  if (!params) {
    box.replaceChildren(el("span", { class: "muted", text: msg.enabled ? "no parameters" : "unknown without control" }));
    box.dataset.signature = "";
    return;
  }
  const signature = params.map(p => p.name).join("\n") + "|" + msg.enabled;
  if (box.dataset.signature !== signature) {
    box.dataset.signature = signature;
    const rows = [];
    if (!params.length) rows.push(el("span", { class: "muted", text: "the context declares none" }));
    for (const p of params) {
      const hint = p.roi ? `an ROI: draw it on an image panel, or type ${p.value}`
        : "a Python literal, e.g. 3, 0.5, 'text', [1, 2]";
      const input = el("input", { type: "text", "data-param": p.name, value: p.value, disabled: !msg.enabled,
        spellcheck: "false", title: `${p.name} (${p.type}); ${hint}`,
        oninput: () => input.classList.add("dirty"),
        onkeydown: ev => { if (ev.key === "Enter") { ev.preventDefault(); submit(); } } });
      const msgEl = el("div", { class: "msg", "data-param-msg": p.name });
      const submit = async () => {
        msgEl.textContent = "sending…"; msgEl.classList.remove("bad");
        const r = await request({ op: "params", values: { [p.name]: input.value } });
        msgEl.textContent = r.message || (r.ok ? "sent" : "failed");
        msgEl.classList.toggle("bad", !r.ok);
        if (r.ok) input.classList.remove("dirty");
      };
      rows.push(el("label", { for: `param-${p.name}`, text: p.name }),
        input, el("button", { type: "button", disabled: !msg.enabled, "data-param-set": p.name, onclick: submit }, "set"),
        msgEl);
      input.id = `param-${p.name}`;
    }
    box.replaceChildren(...rows);
  }
  for (const p of params) {
    const input = box.querySelector(`input[data-param="${CSS.escape(p.name)}"]`);
    if (input && !input.classList.contains("dirty") && document.activeElement !== input) input.value = p.value;
    if (input) input.dataset.current = p.value;
  }
}

export function renderErrors(msg) {
  const list = document.getElementById("errors");
  document.getElementById("errors-count").textContent = msg.errors_total ? `(${msg.errors_total})` : "";
  if (!msg.errors.length) {
    list.replaceChildren(el("li", { class: "muted none", text: msg.enabled ? "none" : "not available without control" }));
    return;
  }
  list.replaceChildren(...msg.errors.map(e => {
    const lines = e.text.split("\n");
    let first = lines[0];
    const li = el("li", { class: "error-item", "data-file": e.file || "", "data-line": e.line ?? "" });
    if (e.file) {
      const loc = `${e.file}:${e.line}`;
      const at = first.indexOf(loc + ":");
      const prefix = at > 0 ? first.slice(0, at) : "";
      first = at >= 0 ? first.slice(at + loc.length + 1) : first;
      li.append(prefix, el("span", { class: "loc", text: loc }), ":" + first);
    } else {
      li.append(first);
    }
    if (lines.length > 1) li.append(el("details", {}, el("summary", { text: "traceback" }),
      el("pre", { text: lines.slice(1).join("\n") })));
    return li;
  }));
}
