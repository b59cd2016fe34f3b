// The page's shared state and its saved layout.
//
// The layout (panels, their settings, columns, folded folders) is kept in
// localStorage under a key made from the context file's path, which the
// server sends in its hello (or, for a dashboard without control, the
// output address): a beamtime's context gets its own layout back, and
// another context does not inherit panels for views it does not have.

export const LAYOUT_PREFIX = "metropc-dashboard/layout/v2/";

export const S = {
  ws: null, hello: null, index: null, views: new Map(), indexAt: 0,
  control: null, panels: [], unacked: 0, rafPending: false,
  replies: new Map(), nextId: 1, retry: 0,
  layoutKey: null,      // null until the hello says which context this is
  layout: normalise(null),
  needsDefault: false,  // no saved layout: fill the page when the index comes
};

function normalise(layout) {
  if (!layout || typeof layout !== "object") layout = {};
  if (!Array.isArray(layout.panels)) layout.panels = [];
  layout.collapsed = layout.collapsed || {};
  layout.columns = layout.columns || 2;
  layout.showHidden = !!layout.showHidden;
  return layout;
}

export function layoutKeyFor(hello) {
  return LAYOUT_PREFIX + (hello.context || hello.output_addr || "default");
}

// Load the layout saved under `key`; `saved` says whether there was one.
export function loadLayout(key) {
  let raw = null;
  try { raw = localStorage.getItem(key); } catch (e) { raw = null; }
  let layout = null;
  try { layout = raw ? JSON.parse(raw) : null; } catch (e) { layout = null; }
  return { layout: normalise(layout), saved: !!(layout && typeof layout === "object") };
}

export function saveLayout() {
  if (!S.layoutKey) return;  // before the hello: nothing to save it under yet
  S.layout.panels = S.panels.map(p => p.config());
  try { localStorage.setItem(S.layoutKey, JSON.stringify(S.layout)); } catch (e) { /* full */ }
}

// Parameters of the context that are ROIs, {name: {kind, ...fields}}.
export function roiParameters() {
  const out = {};
  for (const p of (S.control && S.control.parameters) || []) if (p.roi) out[p.name] = p.roi;
  return out;
}
