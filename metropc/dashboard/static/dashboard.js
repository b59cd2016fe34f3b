// metropc dashboard: the page.  No framework, no build step: the DOM, a
// websocket and <canvas>.  The server sends JSON text messages (hello, index,
// control, reply) and binary frames with view data (see display.pack_frame);
// we acknowledge every message once it is drawn, which is what paces the
// server: a slow page simply gets fewer, newer frames.
"use strict";

const LAYOUT_KEY = "metropc-dashboard/layout/v1";
const COLORS = ["#2f6fde", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0c8599",
                "#b08900", "#5f3dc4", "#d6336c", "#495057"];
const S = {
  ws: null, hello: null, index: null, views: new Map(), indexAt: 0,
  control: null, panels: [], unacked: 0, rafPending: false,
  replies: new Map(), nextId: 1, retry: 0,
  layout: loadLayout(),
};

// ---------------------------------------------------------------------------
// layout, kept in localStorage so that it survives a reload

function loadLayout() {
  let layout = null;
  try { layout = JSON.parse(localStorage.getItem(LAYOUT_KEY)); } catch (e) { layout = null; }
  if (!layout || typeof layout !== "object") layout = {};
  if (!Array.isArray(layout.panels)) layout.panels = [];
  layout.collapsed = layout.collapsed || {};
  layout.columns = layout.columns || 2;
  layout.showHidden = !!layout.showHidden;
  return layout;
}

function saveLayout() {
  S.layout.panels = S.panels.map(p => p.config());
  try { localStorage.setItem(LAYOUT_KEY, JSON.stringify(S.layout)); } catch (e) { /* full */ }
}

// ---------------------------------------------------------------------------
// small helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "-∞";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(digits ?? 2);
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(digits ?? 4)));
}

function fmtRate(r) { return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2); }

function outputName(v) {
  if (!v || !v.output) return "?";
  return v.hint ? `${v.output}·${v.hint}` : v.output;
}

function finiteRange(arr, start, end, step) {
  let lo = Infinity, hi = -Infinity;
  for (let i = start ?? 0; i < (end ?? arr.length); i += (step ?? 1)) {
    const v = arr[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : null;
}

function padRange(r, frac) {
  if (!r) return [0, 1];
  let [lo, hi] = r;
  if (lo === hi) { const d = lo === 0 ? 1 : Math.abs(lo) * 0.05; return [lo - d, hi + d]; }
  const d = (hi - lo) * (frac ?? 0.05);
  return [lo - d, hi + d];
}

function niceTicks(lo, hi, count) {
  if (hi < lo) [lo, hi] = [hi, lo];   // reversed axes (descending coordinates)
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    if (ticks.length > 50) break;
  }
  return ticks;
}

// Ticks of a log axis, as log10 values: 1-2-5 per decade when few decades.
function logTicks(llo, lhi) {
  const mults = lhi - llo > 3 ? [1] : lhi - llo > 1 ? [1, 2, 5] : [1, 1.5, 2, 3, 5, 7];
  const out = [];
  for (let e = Math.floor(llo); e <= Math.ceil(lhi); e++) {
    for (const m of mults) {
      const t = e + Math.log10(m);
      if (t >= llo - 1e-9 && t <= lhi + 1e-9) out.push(t);
    }
  }
  return out.length >= 2 ? out : niceTicks(llo, lhi, 4);
}

function tickLabel(t, ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : Math.abs(t) || 1;
  const a = Math.max(...ticks.map(Math.abs));
  if (a >= 1e6 || (a > 0 && a < 1e-3)) return t.toExponential(Math.max(0, Math.min(6,
    Math.ceil(Math.log10(a / step)))));
  const decimals = Math.max(0, Math.min(8, -Math.floor(Math.log10(step) + 1e-9)));
  return t.toFixed(decimals);
}

// ---------------------------------------------------------------------------
// colour maps (anchors interpolated linearly to 256 entries)

const CMAPS = {
  viridis: ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
            "#6ece58", "#b5de2b", "#fde725"],
  inferno: ["#000004", "#280b54", "#65156e", "#9f2a63", "#d44842", "#f57d15", "#fac127",
            "#fcffa4"],
  gray: ["#000000", "#ffffff"],
  coolwarm: ["#3b4cc0", "#7b9ff9", "#c0d4f5", "#dddddd", "#f2cbb7", "#ee8468", "#b40426"],
};
const LUTS = {};

function lut(name) {
  if (LUTS[name]) return LUTS[name];
  const anchors = (CMAPS[name] || CMAPS.viridis).map(h => [1, 3, 5].map(i => parseInt(h.substr(i, 2), 16)));
  const table = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const f = i / 255 * (anchors.length - 1);
    const k = Math.min(anchors.length - 2, Math.floor(f));
    const t = f - k;
    for (let c = 0; c < 3; c++) table[i * 4 + c] = anchors[k][c] * (1 - t) + anchors[k + 1][c] * t;
    table[i * 4 + 3] = 255;
  }
  LUTS[name] = table;
  return table;
}

// ---------------------------------------------------------------------------
// axes: a plot rectangle with linear (or log) scales, ticks and labels

class Axes {
  constructor(ctx, w, h, opts) {
    this.ctx = ctx;
    const title = !!opts.title;
    this.left = 62; this.right = opts.right ?? 14; this.top = title ? 24 : 10; this.bottom = 40;
    this.x0 = this.left; this.y0 = this.top;
    this.w = Math.max(10, w - this.left - this.right);
    this.h = Math.max(10, h - this.top - this.bottom);
    this.xr = opts.xr; this.yr = opts.yr;
    this.ylog = !!opts.ylog; this.yflip = !!opts.yflip;
  }
  fy(v) { return this.ylog ? (v > 0 ? Math.log10(v) : NaN) : v; }
  px(x) { return this.x0 + (x - this.xr[0]) / (this.xr[1] - this.xr[0]) * this.w; }
  py(y) {
    const lo = this.fy(this.yr[0]), hi = this.fy(this.yr[1]);
    const f = (this.fy(y) - lo) / (hi - lo);
    return this.yflip ? this.y0 + f * this.h : this.y0 + this.h - f * this.h;
  }
  dataX(px) { return this.xr[0] + (px - this.x0) / this.w * (this.xr[1] - this.xr[0]); }
  dataY(py) {
    const lo = this.fy(this.yr[0]), hi = this.fy(this.yr[1]);
    const f = this.yflip ? (py - this.y0) / this.h : (this.y0 + this.h - py) / this.h;
    const v = lo + f * (hi - lo);
    return this.ylog ? Math.pow(10, v) : v;
  }
  inside(px, py) { return px >= this.x0 && px <= this.x0 + this.w && py >= this.y0 && py <= this.y0 + this.h; }
  clip() {
    const c = this.ctx;
    c.save(); c.beginPath(); c.rect(this.x0, this.y0, this.w, this.h); c.clip();
  }
  draw(labels) {
    const c = this.ctx;
    c.save();
    c.font = "11px system-ui, sans-serif";
    c.fillStyle = "#52606d"; c.strokeStyle = "#e4e7eb"; c.lineWidth = 1;
    const xt = niceTicks(this.xr[0], this.xr[1], Math.max(2, Math.floor(this.w / 80)));
    c.textAlign = "center"; c.textBaseline = "top";
    for (const t of xt) {
      const x = Math.round(this.px(t)) + 0.5;
      if (x < this.x0 - 1 || x > this.x0 + this.w + 1) continue;
      if (labels.grid !== false) { c.beginPath(); c.moveTo(x, this.y0); c.lineTo(x, this.y0 + this.h); c.stroke(); }
      c.fillText(tickLabel(t, xt), x, this.y0 + this.h + 4);
    }
    let yt;
    if (this.ylog) {
      const lo = Math.floor(Math.log10(this.yr[0])), hi = Math.ceil(Math.log10(this.yr[1]));
      yt = []; for (let e = lo; e <= hi; e++) yt.push(Math.pow(10, e));
    } else {
      yt = niceTicks(this.yr[0], this.yr[1], Math.max(2, Math.floor(this.h / 40)));
    }
    c.textAlign = "right"; c.textBaseline = "middle";
    for (const t of yt) {
      const y = Math.round(this.py(t)) + 0.5;
      if (!(y >= this.y0 - 1 && y <= this.y0 + this.h + 1)) continue;
      if (labels.grid !== false) { c.beginPath(); c.moveTo(this.x0, y); c.lineTo(this.x0 + this.w, y); c.stroke(); }
      c.fillText(this.ylog ? fmt(t) : tickLabel(t, yt), this.x0 - 4, y);
    }
    c.strokeStyle = "#9aa5b1";
    c.strokeRect(this.x0 + 0.5, this.y0 + 0.5, this.w, this.h);
    c.fillStyle = "#323f4b"; c.font = "12px system-ui, sans-serif";
    if (labels.xlabel) { c.textAlign = "center"; c.textBaseline = "bottom";
      c.fillText(labels.xlabel, this.x0 + this.w / 2, this.y0 + this.h + this.bottom - 2); }
    if (labels.ylabel) {
      c.save(); c.translate(12, this.y0 + this.h / 2); c.rotate(-Math.PI / 2);
      c.textAlign = "center"; c.textBaseline = "middle"; c.fillText(labels.ylabel, 0, 0); c.restore();
    }
    if (labels.title) { c.textAlign = "center"; c.textBaseline = "top"; c.font = "600 12px system-ui, sans-serif";
      c.fillText(labels.title, this.x0 + this.w / 2, 5); }
    c.restore();
  }
}

// ---------------------------------------------------------------------------
// panels

let panelCounter = 0;

class Panel {
  constructor(cfg) {
    this.id = cfg.id || `p${Date.now().toString(36)}${(panelCounter++).toString(36)}`;
    this.view = cfg.view || "";
    this.size = cfg.size || "normal";
    this.opts = Object.assign({}, cfg.opts || {});
    this.frames = 0;
    this.frame = null;       // latest {h, a} received
    this.dirty = false;
    this.geom = null;        // what the last draw mapped, for the hover readout
    this.drawTimes = [];
    this.build();
  }

  config() { return { id: this.id, view: this.view, size: this.size, opts: this.opts }; }

  window() {
    const v = S.views.get(this.view);
    if (!v) return this.opts.window || null;
    if (v.output === "SCALAR") return this.opts.window || (v.hint === "FAST" ? 2000 : v.hint === "SLOW" ? 200 : 500);
    if (v.output === "POINTS") return this.opts.window || 5000;
    return null;
  }

  build() {
    this.select = el("select", { class: "view-select", title: "the view this panel shows",
      onchange: () => { this.setView(this.select.value); } });
    this.label = el("span", { class: "label" });
    this.el = el("div", { class: "panel", "data-panel": this.id },
      el("div", { class: "head" }, this.select, this.label,
        el("button", { type: "button", title: "display settings", class: "btn-settings",
          onclick: () => { this.el.classList.toggle("show-settings"); this.resize(); } }, "⚙"),
        el("button", { type: "button", title: "clear the history (traces and points)", class: "btn-clear",
          onclick: () => this.clear() }, "⟲"),
        el("button", { type: "button", title: "panel size", class: "btn-size",
          onclick: () => this.cycleSize() }, "⤢"),
        el("button", { type: "button", title: "close this panel", class: "btn-close",
          onclick: () => removePanel(this) }, "×")),
      this.settings = el("div", { class: "settings" }),
      this.body = el("div", { class: "body" }),
      el("div", { class: "foot" },
        this.info = el("span", { class: "age" }),
        this.fpsEl = el("span", { class: "fps" }),
        this.hover = el("span", { class: "hover" })));
    this.canvas = el("canvas", { class: "plot" });
    this.canvas.addEventListener("mousemove", ev => this.onHover(ev));
    this.canvas.addEventListener("mouseleave", () => { this.hover.textContent = ""; });
    this.applySize();
    this.refreshSelect();
    this.buildSettings();
    this.updateAttrs();
  }

  updateAttrs() {
    this.el.dataset.view = this.view;
    this.el.dataset.frames = String(this.frames);
    const h = this.frame ? this.frame.h : {};
    this.el.dataset.kind = h.kind || "";
    this.el.dataset.xlabel = h.xlabel || "";
    this.el.dataset.ylabel = h.ylabel || "";
    this.el.dataset.title = h.title || "";
    this.canvas.setAttribute("aria-label", `${this.view}: ${h.kind || "no data"}`
      + (h.xlabel ? `, x: ${h.xlabel}` : "") + (h.ylabel ? `, y: ${h.ylabel}` : ""));
  }

  applySize() {
    this.el.classList.toggle("size-wide", this.size === "wide");
    this.el.classList.toggle("size-large", this.size === "large");
  }

  cycleSize() {
    this.size = { normal: "wide", wide: "large", large: "normal" }[this.size] || "normal";
    this.applySize(); saveLayout(); this.resize();
  }

  setView(name) {
    if (name === this.view) return;
    this.view = name; this.frame = null; this.frames = 0; this.opts = {};
    this.buildSettings(); this.showEmpty("waiting for data…");
    saveLayout(); sendWatch(); this.updateAttrs(); this.refreshLabel();
  }

  clear() {
    if (!this.frame) return;
    const h = this.frame.h;
    if (h.total !== undefined) this.opts.clearedAt = h.total;
    saveLayout(); this.dirty = true; schedule();
  }

  refreshSelect() {
    const names = [...S.views.values()].filter(v => v.output && v.output !== "COMPUTE"
      && (!v.hidden || S.layout.showHidden || v.name === this.view)).map(v => v.name).sort();
    if (this.view && !names.includes(this.view)) names.unshift(this.view);
    const want = ["", ...names].join("\n");
    if (this.select.dataset.options !== want) {
      this.select.replaceChildren(el("option", { value: "", text: "— choose a view —" }),
        ...names.map(n => el("option", { value: n, text: n })));
      this.select.dataset.options = want;
    }
    this.select.value = this.view;
    this.refreshLabel();
  }

  refreshLabel() {
    const v = S.views.get(this.view);
    const out = v ? outputName(v) : null;
    if (out !== this.settingsFor) this.buildSettings();
    this.label.textContent = v ? `${outputName(v)}${v.label ? " · " + v.label : ""}` : "";
    this.label.title = this.label.textContent;
  }

  buildSettings() {
    const s = this.settings;
    const known = S.views.get(this.view);
    this.settingsFor = known ? outputName(known) : null;
    s.replaceChildren();
    const v = S.views.get(this.view) || {};
    const kind = this.frame ? this.frame.h.kind : null;
    const o = this.opts;
    const num = (key, label, title, onchange) => el("label", { title },
      label + " ", el("input", { type: "number", value: o[key] ?? "", step: "any", "data-opt": key,
        onchange: ev => { const x = ev.target.value === "" ? undefined : Number(ev.target.value);
          o[key] = x; saveLayout(); (onchange || (() => {}))(); this.dirty = true; schedule(); } }));
    const check = (key, label) => el("label", {}, el("input", { type: "checkbox", checked: !!o[key],
      "data-opt": key, onchange: ev => { o[key] = ev.target.checked; saveLayout(); this.dirty = true; schedule(); } }), " " + label);
    const choice = (key, label, values, dflt) => el("label", {}, label + " ", el("select", { "data-opt": key,
      onchange: ev => { o[key] = ev.target.value; saveLayout(); this.dirty = true; schedule(); } },
      ...values.map(x => el("option", { value: x, text: x, selected: (o[key] || dflt) === x }))));
    if (v.output === "SCALAR" || kind === "trace") {
      s.append(num("window", "points", "how many of the latest results to show", () => sendWatch()),
               check("markers", "markers"));
    } else if (v.output === "POINTS" || kind === "points") {
      s.append(choice("mode", "show", ["scatter", "binned"], v.hint === "BINNED" ? "binned" : "scatter"),
               num("bins", "bins", "number of bins along x (binned)"),
               num("window", "points", "how many of the latest points to keep", () => sendWatch()));
    } else if (v.output === "MATRIX" || kind === "image") {
      s.append(choice("cmap", "colours", Object.keys(CMAPS), "viridis"),
               choice("levels", "levels", ["auto", "auto 1–99%", "manual"], "auto"),
               num("zmin", "min", "lower level (manual)"), num("zmax", "max", "upper level (manual)"),
               check("log", "log"), check("fill", "fill panel"), check("flipy", "y up"));
    } else if (v.output === "VECTOR" || kind === "line" || kind === "bars") {
      s.append(check("ylog", "log y"), check("markers", "markers"));
    } else {
      s.append(el("span", { class: "muted", text: "no settings for this view" }));
    }
  }

  showEmpty(text) {
    this.body.replaceChildren(el("div", { class: "empty", text }));
    this.mode = "empty";
  }

  ensureCanvas() {
    if (this.mode !== "canvas") { this.body.replaceChildren(this.canvas); this.mode = "canvas"; }
    const r = this.body.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(50, Math.floor(r.width)), h = Math.max(50, Math.floor(r.height));
    if (this.canvas.width !== Math.floor(w * dpr) || this.canvas.height !== Math.floor(h * dpr)) {
      this.canvas.width = Math.floor(w * dpr); this.canvas.height = Math.floor(h * dpr);
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, w, h);
    return [ctx, w, h];
  }

  resize() { if (this.frame) { this.dirty = true; schedule(); } }

  receive(h, a) {
    const first = !this.frame || this.frame.h.kind !== h.kind;
    this.frame = { h, a };
    if (first) this.buildSettings();
    this.dirty = true;
  }

  draw() {
    if (!this.dirty || !this.frame) return;
    this.dirty = false;
    const { h, a } = this.frame;
    try {
      switch (h.kind) {
        case "trace": this.drawTrace(h, a); break;
        case "line": case "bars": this.drawLines(h, a); break;
        case "image": this.drawImage(h, a); break;
        case "points": this.drawPoints(h, a); break;
        case "text": this.drawText(h.text); break;
        case "html": this.drawHtml(h.text); break;
        case "value": this.drawValue(h.value); break;
        default: this.showEmpty("no result yet");
      }
    } catch (e) {
      this.showEmpty("cannot draw: " + e);
      console.error(e);
    }
    this.frames++;
    const now = performance.now();
    this.drawTimes.push(now);
    while (this.drawTimes.length && this.drawTimes[0] < now - 2000) this.drawTimes.shift();
    this.fpsEl.textContent = `${(this.drawTimes.length / 2).toFixed(1)} fps`;
    this.info.textContent = (h.event_id !== null && h.event_id !== undefined ? `event ${h.event_id}` : "")
      + (h.note ? ` · ${h.note}` : "") + (h.factor > 1 ? ` · ${h.shape[0]}×${h.shape[1]} shown ÷${h.factor}` : "");
    this.updateAttrs();
  }

  drawText(text) {
    if (this.mode !== "text") {
      this.pre = el("pre", { class: "text" }); this.body.replaceChildren(this.pre); this.mode = "text";
    }
    if (this.pre.textContent !== text) this.pre.textContent = text;
  }

  drawHtml(text) {
    if (this.mode !== "html") {
      // sandbox="" : no scripts, no forms, no navigation of this page.
      this.iframe = el("iframe", { class: "html", sandbox: "", referrerpolicy: "no-referrer" });
      this.body.replaceChildren(this.iframe); this.mode = "html"; this.htmlText = null;
    }
    if (this.htmlText !== text) { this.iframe.srcdoc = text; this.htmlText = text; }
  }

  drawValue(value) {
    if (this.mode !== "value") {
      this.valueEl = el("div", { class: "value" }); this.body.replaceChildren(this.valueEl); this.mode = "value";
    }
    this.valueEl.textContent = fmt(value, 6);
  }

  // SCALAR: a rolling trace against train id.
  drawTrace(h, a) {
    const v = S.views.get(this.view) || {};
    let x = a.x, y = a.y, n = x.length;
    const cleared = this.opts.clearedAt;
    let start = 0;
    if (cleared !== undefined && h.total !== undefined) {
      if (cleared > h.total) delete this.opts.clearedAt;     // history restarted
      else start = Math.max(0, n - (h.total - cleared));
    }
    start = Math.max(start, n - (this.window() || n));      // another panel may want more
    const [ctx, w, hh] = this.ensureCanvas();
    const slow = v.hint === "SLOW";
    const big = slow ? 46 : 0;
    if (slow) {
      ctx.fillStyle = "#1f2933"; ctx.font = "600 30px ui-monospace, monospace"; ctx.textAlign = "center";
      ctx.textBaseline = "top";
      ctx.fillText(n > start ? fmt(y[n - 1], 6) : "–", w / 2, 6);
    }
    const xr = padRange(finiteRange(x, start, n), 0.02);
    const yr = padRange(finiteRange(y, start, n), 0.08);
    ctx.save(); ctx.translate(0, big);
    const ax = new Axes(ctx, w, hh - big, { xr, yr, title: null });
    ax.draw({ xlabel: h.xlabel, ylabel: null });
    ax.clip();
    ctx.strokeStyle = COLORS[0]; ctx.fillStyle = COLORS[0]; ctx.lineWidth = 1.5;
    const fast = v.hint === "FAST";
    if (!slow) {
      ctx.beginPath();
      let pen = false;
      for (let i = start; i < n; i++) {
        if (!Number.isFinite(y[i])) { pen = false; continue; }
        const px = ax.px(x[i]), py = ax.py(y[i]);
        if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        pen = true;
      }
      ctx.stroke();
    }
    const markers = slow || this.opts.markers || (!fast && n - start <= 300);
    if (markers) {
      for (let i = start; i < n; i++) {
        if (!Number.isFinite(y[i])) continue;
        ctx.beginPath(); ctx.arc(ax.px(x[i]), ax.py(y[i]), slow ? 3 : 2, 0, 2 * Math.PI); ctx.fill();
      }
    }
    ctx.restore(); ctx.restore();
    this.geom = { ax, dy: big };
  }

  // VECTOR: lines (or bars for histograms and distributions).
  drawLines(h, a) {
    const x = a.x, y = a.y, nx = x.length, lines = h.lines || 1;
    const [ctx, w, hh] = this.ensureCanvas();
    const ylog = !!this.opts.ylog;
    const bars = h.kind === "bars";
    let xr = finiteRange(x) || [0, 1];
    if (bars) { const bw = (h.width || 1) / 2; xr = [xr[0] - bw, xr[1] + bw]; }
    let yr;
    if (ylog) {
      let lo = Infinity, hi = -Infinity;
      for (const v of y) if (v > 0) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      yr = lo <= hi ? [lo / 1.5, hi * 1.5] : [0.1, 10];
    } else {
      yr = finiteRange(y);
      if (bars && yr) yr = [Math.min(0, yr[0]), Math.max(0, yr[1])];
      yr = padRange(yr, 0.05);
    }
    const ax = new Axes(ctx, w, hh, { xr: bars ? xr : padRange(xr, 0), yr, ylog, title: h.title });
    ax.draw({ xlabel: h.xlabel, ylabel: h.ylabel, title: h.title });
    ax.clip();
    for (let l = 0; l < lines; l++) {
      const color = COLORS[l % COLORS.length];
      const off = l * nx;
      if (bars) {
        ctx.fillStyle = color; ctx.globalAlpha = lines > 1 ? 0.5 : 0.85;
        const bw = Math.max(1, Math.abs(ax.px(x[0] + (h.width || 1)) - ax.px(x[0])) - (nx < 200 ? 1 : 0));
        const base = ylog ? ax.y0 + ax.h : ax.py(0);
        for (let i = 0; i < nx; i++) {
          const v = y[off + i];
          if (!Number.isFinite(v) || (ylog && v <= 0)) continue;
          const py = ax.py(v);
          ctx.fillRect(ax.px(x[i]) - bw / 2, Math.min(py, base), bw, Math.abs(base - py));
        }
        ctx.globalAlpha = 1;
      } else {
        ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
        let pen = false;
        for (let i = 0; i < nx; i++) {
          const v = y[off + i];
          if (!Number.isFinite(v) || (ylog && v <= 0)) { pen = false; continue; }
          const px = ax.px(x[i]), py = ax.py(v);
          if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
          pen = true;
        }
        ctx.stroke();
        if (this.opts.markers) {
          ctx.fillStyle = color;
          for (let i = 0; i < nx; i++) {
            const v = y[off + i];
            if (Number.isFinite(v)) { ctx.beginPath(); ctx.arc(ax.px(x[i]), ax.py(v), 2, 0, 7); ctx.fill(); }
          }
        }
      }
    }
    ctx.restore();
    if (h.series && h.series.length > 1) {
      ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "top";
      h.series.forEach((s, i) => { ctx.fillStyle = COLORS[i % COLORS.length];
        ctx.fillText(s, ax.x0 + ax.w - 4, ax.y0 + 4 + 13 * i); });
    }
    this.geom = { ax, dy: 0, line: { x, y, nx } };
  }

  // MATRIX / IMAGE: a heat map with a colour bar and adjustable levels.
  drawImage(h, a) {
    const z = a.z, [rows, cols] = h.dshape;
    const o = this.opts;
    const [ctx, w, hh] = this.ensureCanvas();
    // levels
    let lo, hi;
    if (o.levels === "manual" && Number.isFinite(o.zmin) && Number.isFinite(o.zmax)) {
      lo = o.zmin; hi = o.zmax;
    } else if (o.levels === "auto 1–99%") {
      const step = Math.max(1, Math.floor(z.length / 20000));
      const sample = [];
      for (let i = 0; i < z.length; i += step) if (Number.isFinite(z[i])) sample.push(z[i]);
      sample.sort((p, q) => p - q);
      lo = sample[Math.floor(sample.length * 0.01)]; hi = sample[Math.min(sample.length - 1, Math.floor(sample.length * 0.99))];
    } else {
      lo = h.min; hi = h.max;
    }
    if (lo === null || lo === undefined || !Number.isFinite(lo)) { lo = 0; hi = 1; }
    if (!(hi > lo)) hi = lo + (Math.abs(lo) || 1) * 1e-6 + 1e-12;
    const log = !!o.log && hi > 0;
    const llo = log ? Math.log10(lo > 0 ? lo : hi * 1e-4) : lo, lhi = log ? Math.log10(hi) : hi;
    // pixels
    if (!this.off || this.off.width !== cols || this.off.height !== rows) {
      this.off = document.createElement("canvas"); this.off.width = cols; this.off.height = rows;
      this.offImg = this.off.getContext("2d").createImageData(cols, rows);
    }
    const table = lut(o.cmap || "viridis");
    const px = this.offImg.data;
    const scale = 255 / (lhi - llo);
    for (let i = 0; i < z.length; i++) {
      let v = z[i];
      const j = i * 4;
      if (!Number.isFinite(v)) { px[j] = 220; px[j + 1] = 220; px[j + 2] = 220; px[j + 3] = 255; continue; }
      if (log) v = v > 0 ? Math.log10(v) : llo;
      let k = ((v - llo) * scale) | 0;
      k = k < 0 ? 0 : k > 255 ? 255 : k;
      px[j] = table[k * 4]; px[j + 1] = table[k * 4 + 1]; px[j + 2] = table[k * 4 + 2]; px[j + 3] = 255;
    }
    this.off.getContext("2d").putImageData(this.offImg, 0, 0);
    // geometry: pixel centres at the coordinates, edges half a pixel out
    const [x0, x1] = h.xrange, [y0, y1] = h.yrange;
    const dx = h.shape[1] > 1 && x1 !== x0 ? (x1 - x0) / (h.shape[1] - 1) : 1;
    const dy = h.shape[0] > 1 && y1 !== y0 ? (y1 - y0) / (h.shape[0] - 1) : 1;
    const xr = [x0 - dx / 2, x0 - dx / 2 + dx * h.shape[1]];
    const yr = [y0 - dy / 2, y0 - dy / 2 + dy * h.shape[0]];
    const ax = new Axes(ctx, w, hh, { xr, yr, yflip: !o.flipy, title: h.title, right: 78 });
    if (!o.fill) {
      // square data units: shrink the plot rectangle to the image's aspect
      const aspect = Math.abs((xr[1] - xr[0]) / (yr[1] - yr[0]));
      if (Number.isFinite(aspect) && aspect > 0) {
        if (ax.w / ax.h > aspect) { const nw = ax.h * aspect; ax.x0 += (ax.w - nw) / 2; ax.w = nw; }
        else { const nh = ax.w / aspect; ax.h = nh; }
      }
    }
    ctx.imageSmoothingEnabled = false;
    ctx.save();
    if (o.flipy) { ctx.translate(0, ax.y0 + ax.h); ctx.scale(1, -1); ctx.drawImage(this.off, ax.x0, 0, ax.w, ax.h); }
    else ctx.drawImage(this.off, ax.x0, ax.y0, ax.w, ax.h);
    ctx.restore();
    ax.draw({ xlabel: h.xlabel, ylabel: h.ylabel, title: h.title, grid: false });
    // colour bar
    const cbx = ax.x0 + ax.w + 14, cbw = 14, cby = ax.y0, cbh = ax.h;
    for (let i = 0; i < cbh; i++) {
      const k = Math.max(0, Math.min(255, Math.round((1 - i / Math.max(1, cbh - 1)) * 255)));
      ctx.fillStyle = `rgb(${table[k * 4]},${table[k * 4 + 1]},${table[k * 4 + 2]})`;
      ctx.fillRect(cbx, cby + i, cbw, 1);
    }
    ctx.strokeStyle = "#9aa5b1"; ctx.strokeRect(cbx + 0.5, cby + 0.5, cbw, cbh);
    ctx.fillStyle = "#52606d"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    const ticks = log ? logTicks(llo, lhi) : niceTicks(lo, hi, Math.max(2, Math.floor(cbh / 40)));
    for (const t of ticks) {
      const y = cby + cbh - (t - llo) / (lhi - llo) * cbh;
      if (y < cby - 1 || y > cby + cbh + 1) continue;
      ctx.fillRect(cbx + cbw, Math.round(y), 3, 1);
      ctx.fillText(log ? fmt(Math.pow(10, t)) : tickLabel(t, ticks), cbx + cbw + 5, y);
    }
    if (h.zlabel) {
      ctx.save(); ctx.translate(w - 6, cby + cbh / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
      ctx.textBaseline = "bottom"; ctx.fillStyle = "#323f4b"; ctx.fillText(h.zlabel, 0, 0); ctx.restore();
    }
    this.geom = { ax, dy: 0, image: { z, rows, cols, xr, yr } };
    this.levels = [lo, hi];
  }

  // POINTS: scatter, or the mean of y in bins of x.
  drawPoints(h, a) {
    const v = S.views.get(this.view) || {};
    let x = a.x, y = a.y, n = x.length, start = 0;
    const cleared = this.opts.clearedAt;
    if (cleared !== undefined && h.total !== undefined) {
      if (cleared > h.total) delete this.opts.clearedAt;
      else start = Math.max(0, n - (h.total - cleared));
    }
    start = Math.max(start, n - (this.window() || n));
    const [ctx, w, hh] = this.ensureCanvas();
    const mode = this.opts.mode || (v.hint === "BINNED" ? "binned" : "scatter");
    const xr0 = finiteRange(x, start, n);
    let bx = null, by = null, bcount = null;
    if (mode === "binned" && xr0) {
      const nb = Math.max(1, Math.min(1000, this.opts.bins || 50));
      const sums = new Float64Array(nb); bcount = new Float64Array(nb);
      const span = (xr0[1] - xr0[0]) || 1;
      for (let i = start; i < n; i++) {
        if (!Number.isFinite(x[i]) || !Number.isFinite(y[i])) continue;
        const k = Math.min(nb - 1, Math.floor((x[i] - xr0[0]) / span * nb));
        sums[k] += y[i]; bcount[k] += 1;
      }
      bx = []; by = [];
      for (let k = 0; k < nb; k++) if (bcount[k] > 0) {
        bx.push(xr0[0] + (k + 0.5) * span / nb); by.push(sums[k] / bcount[k]);
      }
    }
    const yr = padRange(mode === "binned" && by && by.length ? finiteRange(by) : finiteRange(y, start, n), 0.08);
    const ax = new Axes(ctx, w, hh, { xr: padRange(xr0, 0.03), yr, title: h.title });
    ax.draw({ xlabel: h.xlabel, ylabel: h.ylabel, title: h.title });
    ax.clip();
    if (mode === "binned" && bx) {
      ctx.fillStyle = "#adb5bd"; ctx.globalAlpha = 0.35;
      for (let i = start; i < n; i++) if (Number.isFinite(y[i])) ctx.fillRect(ax.px(x[i]) - 1, ax.py(y[i]) - 1, 2, 2);
      ctx.globalAlpha = 1; ctx.strokeStyle = COLORS[1]; ctx.fillStyle = COLORS[1]; ctx.lineWidth = 2;
      ctx.beginPath();
      bx.forEach((xx, i) => { const px = ax.px(xx), py = ax.py(by[i]); if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py); });
      ctx.stroke();
      bx.forEach((xx, i) => { ctx.beginPath(); ctx.arc(ax.px(xx), ax.py(by[i]), 3, 0, 7); ctx.fill(); });
    } else {
      ctx.fillStyle = COLORS[0]; ctx.globalAlpha = n - start > 2000 ? 0.4 : 0.75;
      for (let i = start; i < n; i++) {
        if (!Number.isFinite(x[i]) || !Number.isFinite(y[i])) continue;
        ctx.beginPath(); ctx.arc(ax.px(x[i]), ax.py(y[i]), 2.5, 0, 7); ctx.fill();
      }
      ctx.globalAlpha = 1;
    }
    ctx.restore();
    ctx.fillStyle = "#7b8794"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "top";
    ctx.fillText(`${n - start} points`, ax.x0 + ax.w - 4, ax.y0 + 4);
    this.geom = { ax, dy: 0 };
  }

  onHover(ev) {
    const g = this.geom;
    if (!g) return;
    const r = this.canvas.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top - g.dy;
    if (!g.ax.inside(px, py)) { this.hover.textContent = ""; return; }
    const x = g.ax.dataX(px), y = g.ax.dataY(py);
    let text = `x ${fmt(x)}  y ${fmt(y)}`;
    if (g.image) {
      const { z, rows, cols, xr, yr } = g.image;
      const c = Math.floor((x - xr[0]) / (xr[1] - xr[0]) * cols);
      const rr = Math.floor((y - yr[0]) / (yr[1] - yr[0]) * rows);
      if (c >= 0 && c < cols && rr >= 0 && rr < rows) text += `  z ${fmt(z[rr * cols + c])}`;
    }
    this.hover.textContent = text;
  }
}

function addPanel(cfg, save) {
  const p = new Panel(cfg || {});
  S.panels.push(p);
  document.getElementById("panels").append(p.el);
  document.getElementById("no-panels").style.display = "none";
  if (save !== false) { saveLayout(); sendWatch(); }
  if (!p.view) p.showEmpty("choose a view above");
  else p.showEmpty("waiting for data…");
  return p;
}

function removePanel(p) {
  S.panels = S.panels.filter(q => q !== p);
  p.el.remove();
  if (!S.panels.length) document.getElementById("no-panels").style.display = "";
  saveLayout(); sendWatch();
}

// ---------------------------------------------------------------------------
// the connection

function send(obj) {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(obj));
}

function sendWatch() {
  const views = {};
  for (const p of S.panels) {
    if (!p.view) continue;
    const wnd = p.window();
    const prev = views[p.view];
    views[p.view] = { window: Math.max(prev && prev.window || 0, wnd || 0) || null };
  }
  const signature = JSON.stringify(views);
  if (signature === S.lastWatch) return;
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.lastWatch = signature;
  send({ op: "watch", views });
}

function request(obj) {
  const id = S.nextId++;
  obj.id = id;
  return new Promise(resolve => { S.replies.set(id, resolve); send(obj); });
}

function connect() {
  // The token (if this dashboard needs one) is also a cookie; passing it on
  // covers browsers that refuse cookies.
  const token = new URLSearchParams(location.search).get("token");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws"
    + (token ? "?token=" + encodeURIComponent(token) : "");
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  setConn("connecting", "connecting");
  ws.onopen = () => { S.retry = 0; setConn("up", "connected"); S.unacked = 0; S.lastWatch = null; sendWatch(); };
  ws.onclose = () => {
    setConn("down", "disconnected");
    for (const resolve of S.replies.values()) resolve({ ok: false, message: "disconnected" });
    S.replies.clear();
    S.retry = Math.min(5, S.retry + 1);
    setTimeout(connect, 500 * S.retry);
  };
  ws.onmessage = ev => {
    S.unacked++;
    if (typeof ev.data === "string") onText(JSON.parse(ev.data));
    else onFrame(ev.data);
    schedule();
  };
}

function setConn(state, text) {
  const c = document.getElementById("conn");
  c.className = "conn " + (state === "up" ? "conn-up" : state === "stale" ? "conn-stale" : "conn-down");
  c.textContent = text; c.dataset.state = state;
}

function onText(msg) {
  switch (msg.op) {
    case "hello":
      S.hello = msg;
      document.getElementById("title").textContent = msg.title || "";
      document.title = `metropc · ${msg.title}`;
      break;
    case "index": onIndex(msg); break;
    case "control": onControl(msg); break;
    case "reply": {
      const resolve = S.replies.get(msg.id);
      if (resolve) { S.replies.delete(msg.id); resolve(msg); }
      break;
    }
  }
}

function onFrame(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const start = Math.ceil((4 + n) / 8) * 8;
  const a = {};
  for (const [name, [off, count, dtype]] of Object.entries(h.arrays || {})) {
    a[name] = dtype === "f4" ? new Float32Array(buf, start + off, count) : new Float64Array(buf, start + off, count);
  }
  for (const p of S.panels) if (p.view === h.view) p.receive(h, a);
}

// Draw what changed and acknowledge what arrived, once per animation frame:
// a hidden or busy page acknowledges nothing, so the server stops sending.
function schedule() {
  if (S.rafPending) return;
  S.rafPending = true;
  requestAnimationFrame(() => {
    S.rafPending = false;
    for (const p of S.panels) p.draw();
    if (S.unacked > 0) { send({ op: "ack", n: S.unacked }); S.unacked = 0; }
  });
}

// ---------------------------------------------------------------------------
// index: the tree of views, the actions, the inputs

function onIndex(msg) {
  S.index = msg; S.indexAt = performance.now();
  S.views = new Map(msg.views.map(v => [v.name, v]));
  renderTree(); renderActions(); renderInputs();
  for (const p of S.panels) { p.refreshSelect(); }
  sendWatch();   // history windows depend on the output types, now known
  const ev = msg.paths.find(p => p.path === "internal#train" || p.path === "internal#event");
  const dropped = msg.paths.find(p => p.path === "internal#dropped_events");
  document.getElementById("events").textContent = ev ? `${ev.counts} events · ${fmtRate(ev.rate)}/s`
    + (dropped && dropped.counts ? ` · ${dropped.counts} dropped` : "") : "";
  if (S.ws && S.ws.readyState === WebSocket.OPEN) setConn("up", "live");
}

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

function renderTree() {
  const tree = document.getElementById("tree");
  const views = [...S.views.values()].filter(v => !v.hidden || S.layout.showHidden);
  const signature = views.map(v => `${v.name}|${v.output}|${v.hint}|${v.stage}|${v.hidden}`).join("\n")
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
        out.push(el("div", {
          class: "row leaf" + (compute ? " compute" : "") + (v.hidden ? " hidden-view" : ""),
          "data-view": v.name, title: (v.label ? v.label + "\n" : "") + `${v.name}: ${outputName(v)}, stage ${v.stage}`
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

function renderActions() {
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

function renderInputs() {
  const t = document.getElementById("inputs");
  t.replaceChildren(...S.index.paths.map(p => el("tr", {},
    el("td", { text: p.path }), el("td", { class: "n", text: String(p.counts) }),
    el("td", { class: "n", text: `${fmtRate(p.rate)}/s` }))));
}

// ---------------------------------------------------------------------------
// control: parameters and errors

function onControl(msg) {
  S.control = msg;
  document.getElementById("params-note").textContent = msg.note || "";
  renderParams(msg);
  renderErrors(msg);
  if (S.index) renderActions();
}

function renderParams(msg) {
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
      const input = el("input", { type: "text", "data-param": p.name, value: p.value, disabled: !msg.enabled,
        spellcheck: "false", title: `${p.name} (${p.type}); a Python literal, e.g. 3, 0.5, 'text', [1, 2]`,
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

function renderErrors(msg) {
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

// ---------------------------------------------------------------------------
// start

function init() {
  const root = document.documentElement;
  const columns = document.getElementById("columns");
  columns.value = String(S.layout.columns);
  root.style.setProperty("--cols", S.layout.columns);
  columns.addEventListener("change", () => {
    S.layout.columns = Number(columns.value); root.style.setProperty("--cols", S.layout.columns);
    saveLayout(); S.panels.forEach(p => p.resize());
  });
  const hidden = document.getElementById("show-hidden");
  hidden.checked = S.layout.showHidden;
  hidden.addEventListener("change", () => {
    S.layout.showHidden = hidden.checked; saveLayout();
    if (S.index) { renderTree(); S.panels.forEach(p => p.refreshSelect()); }
  });
  document.getElementById("add-panel").addEventListener("click", () => addPanel({}));
  for (const cfg of S.layout.panels) addPanel(cfg, false);
  window.addEventListener("resize", () => S.panels.forEach(p => p.resize()));
  if (window.ResizeObserver) {
    const ro = new ResizeObserver(entries => {
      for (const e of entries) { const p = S.panels.find(q => q.body === e.target); if (p) p.resize(); }
    });
    new MutationObserver(() => S.panels.forEach(p => { if (!p.observed) { ro.observe(p.body); p.observed = true; } }))
      .observe(document.getElementById("panels"), { childList: true });
    S.panels.forEach(p => { ro.observe(p.body); p.observed = true; });
  }
  // Mark the page stale when the pipeline's index stops coming.
  setInterval(() => {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN || !S.index) return;
    const age = (performance.now() - S.indexAt) / 1000;
    if (age > 3) setConn("stale", `no index for ${age.toFixed(0)} s`);
  }, 1000);
  connect();
}

init();
