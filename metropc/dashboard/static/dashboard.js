// metropc dashboard: the page's entry point.  No framework, no build step:
// ES modules in js/ split by job (connection, panels and their drawing,
// interaction, ROIs, export, sidebar, layout state), the DOM, a websocket
// and <canvas>.  This module wires them: it dispatches the server's
// messages, restores (or fills) the layout, and runs the top bar.

import { connect, request, sendWatch, setConn } from "./js/connection.js";
import { addPanel, removeAllPanels } from "./js/panel.js";
import { renderActions, renderErrors, renderInputs, renderParams, renderTree } from "./js/sidebar.js";
import { S, layoutKeyFor, loadLayout, saveLayout } from "./js/state.js";
import { fmtRate } from "./js/util.js";

// A panel for every view that publishes and is not hidden, images first
// (they are what people look at first at a beamline), then by name.
export function defaultPanels() {
  const views = [...S.views.values()].filter(v => v.output && v.output !== "COMPUTE" && !v.hidden);
  const rank = v => (v.output === "MATRIX" ? 0 : 1);
  views.sort((p, q) => rank(p) - rank(q) || p.name.localeCompare(q.name));
  return views.map(v => ({ view: v.name }));
}

function fillDefault() {
  removeAllPanels();
  for (const cfg of defaultPanels()) addPanel(cfg, false);
  S.needsDefault = false;
  saveLayout(); sendWatch();
}

function applyLayoutSettings() {
  const root = document.documentElement;
  document.getElementById("columns").value = String(S.layout.columns);
  root.style.setProperty("--cols", S.layout.columns);
  document.getElementById("show-hidden").checked = S.layout.showHidden;
}

function onHello(msg) {
  S.hello = msg;
  document.getElementById("title").textContent = msg.title || "";
  document.title = `metropc · ${msg.title}`;
  const key = layoutKeyFor(msg);
  if (key === S.layoutKey) return;       // a reconnection: keep what is shown
  S.layoutKey = key;
  document.body.dataset.layoutKey = key;
  const { layout, saved } = loadLayout(key);
  S.layout = layout;
  removeAllPanels();
  applyLayoutSettings();
  for (const cfg of layout.panels) addPanel(cfg, false);
  S.needsDefault = !saved;
  if (S.index && S.needsDefault) fillDefault();
  if (S.index) { renderTree(); S.panels.forEach(p => p.refreshSelect()); }
  sendWatch();
}

function onIndex(msg) {
  S.index = msg; S.indexAt = performance.now();
  S.views = new Map(msg.views.map(v => [v.name, v]));
  if (S.needsDefault && S.layoutKey) fillDefault();
  renderTree(); renderActions(); renderInputs();
  for (const p of S.panels) { p.refreshSelect(); }
  sendWatch();   // history windows depend on the output types, now known
  const ev = msg.paths.find(p => p.path === "internal#train" || p.path === "internal#event");
  const dropped = msg.paths.find(p => p.path === "internal#dropped_events");
  document.getElementById("events").textContent = ev ? `${ev.counts} events · ${fmtRate(ev.rate)}/s`
    + (dropped && dropped.counts ? ` · ${dropped.counts} dropped` : "") : "";
  document.getElementById("run-state").textContent = runState(msg.paths);
  if (S.ws && S.ws.readyState === WebSocket.OPEN) setConn("up", "live");
}

// READY / RUN / STOP (paused) and the run number, from the index entries
// internal#state (0, 1, 2) and internal#run (0: no run).
const STATE_WORDS = ["ready", "running", "PAUSED"];
function runState(paths) {
  const state = paths.find(p => p.path === "internal#state");
  if (!state) return "";
  const run = paths.find(p => p.path === "internal#run");
  return (STATE_WORDS[state.counts] || "?") + (run && run.counts ? ` · run ${run.counts}` : "");
}

function onControl(msg) {
  S.control = msg;
  document.getElementById("params-note").textContent = msg.note || "";
  renderParams(msg);
  renderErrors(msg);
  if (S.index) renderActions();
  const reset = document.getElementById("reset-all");
  reset.disabled = !msg.enabled;
  reset.title = msg.enabled ? "reset every accumulating view in the pipeline and clear every panel's history"
    : msg.note;
  for (const p of S.panels) p.onControl();
}

function onText(msg) {
  switch (msg.op) {
    case "hello": onHello(msg); break;
    case "index": onIndex(msg); break;
    case "control": onControl(msg); break;
    case "reply": {
      const resolve = S.replies.get(msg.id);
      if (resolve) { S.replies.delete(msg.id); resolve(msg); }
      break;
    }
  }
}

function onFrame(h, a) {
  for (const p of S.panels) if (p.view === h.view) p.receive(h, a);
}

async function resetAll() {
  const status = document.getElementById("reset-status");
  for (const p of S.panels) {
    if (p.frame && p.frame.h.total !== undefined) { p.opts.clearedAt = p.frame.h.total; p.dirty = true; }
  }
  saveLayout();
  status.textContent = "…";
  const r = await request({ op: "reset", views: [] });
  status.textContent = r.ok ? "" : r.message;
  status.title = r.message || "";
}

function init() {
  const root = document.documentElement;
  const columns = document.getElementById("columns");
  applyLayoutSettings();
  columns.addEventListener("change", () => {
    S.layout.columns = Number(columns.value); root.style.setProperty("--cols", S.layout.columns);
    saveLayout(); S.panels.forEach(p => p.resize());
  });
  const hidden = document.getElementById("show-hidden");
  hidden.addEventListener("change", () => {
    S.layout.showHidden = hidden.checked; saveLayout();
    if (S.index) { renderTree(); S.panels.forEach(p => p.refreshSelect()); }
  });
  document.getElementById("add-panel").addEventListener("click", () => addPanel({}));
  document.getElementById("all-views").addEventListener("click", () => { if (S.index) fillDefault(); });
  document.getElementById("reset-all").addEventListener("click", resetAll);
  // Close an open export menu when clicking elsewhere.
  document.addEventListener("click", ev => {
    for (const p of S.panels) if (!p.el.contains(ev.target) || !ev.target.closest(".menu-wrap")) p.closeMenu();
  });
  window.addEventListener("resize", () => S.panels.forEach(p => p.resize()));
  if (window.ResizeObserver) {
    const ro = new ResizeObserver(entries => {
      for (const e of entries) { const p = S.panels.find(q => q.body === e.target); if (p) p.resize(); }
    });
    new MutationObserver(() => S.panels.forEach(p => { if (!p.observed) { ro.observe(p.body); p.observed = true; } }))
      .observe(document.getElementById("panels"), { childList: true });
  }
  // Mark the page stale when the pipeline's index stops coming.
  setInterval(() => {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN || !S.index) return;
    const age = (performance.now() - S.indexAt) / 1000;
    if (age > 3) setConn("stale", `no index for ${age.toFixed(0)} s`);
  }, 1000);
  connect({ onText, onFrame });
}

init();
