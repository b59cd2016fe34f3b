// Plot panels: one view each, drawn on <canvas> in its own way per kind of
// frame (trace, line, bars, image, points, text, html, value), with the
// settings, zoom, ROIs, reset and export of that panel.

import { Axes } from "./axes.js";
import { COLORMAP_NAMES, lut } from "./colormaps.js";
import { request, schedule, sendWatch } from "./connection.js";
import { exportCSV, exportPNG } from "./export.js";
import { Interaction } from "./interact.js";
import { drawRoi, imageGeometry, roiValue } from "./roi.js";
import { S, roiParameters, saveLayout } from "./state.js";
import { COLORS, el, finiteRange, fmt, logTicks, niceTicks, outputName, padRange, positiveRange,
         quantiles, tickLabel } from "./util.js";

let panelCounter = 0;

// Views whose results accumulate in the pipeline (REDUCE and STEP stages:
// histograms, averages, ...): their reset button resets them there.
export function accumulates(v) { return !!v && (v.stage === "REDUCE" || v.stage === "STEP"); }

// The title of a view: its label, else the first line of its docstring.
export function viewTitle(v) { return v ? (v.label || v.doc || "") : ""; }

export class Panel {
  constructor(cfg) {
    this.id = cfg.id || `p${Date.now().toString(36)}${(panelCounter++).toString(36)}`;
    this.view = cfg.view || "";
    this.size = cfg.size || "normal";
    this.opts = Object.assign({}, cfg.opts || {});
    if (this.opts.levels === "auto 1–99%") this.opts.levels = "percentile";   // layouts of v1
    this.frames = 0;
    this.frame = null;       // latest {h, a} received
    this.dirty = false;
    this.geom = null;        // what the last draw mapped: the crosshair, zoom and ROIs use it
    this.zoom = null;        // {x: [lo, hi], y: [lo, hi]} replacing the automatic ranges
    this.roiTool = false;    // the next drag on the image draws the selected ROI
    this.roiDraft = null;    // an ROI being drawn or edited, or sent and not yet confirmed
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
    this.roiButton = el("button", { type: "button", class: "btn-roi", title: "draw the selected ROI on the image",
      onclick: () => this.toggleRoiTool() }, "▭ ROI");
    this.exportMenu = el("span", { class: "menu" },
      el("button", { type: "button", class: "btn-png", onclick: () => { exportPNG(this); this.closeMenu(); } }, "PNG image"),
      el("button", { type: "button", class: "btn-csv", onclick: () => { exportCSV(this); this.closeMenu(); } }, "CSV data"));
    this.resetButton = el("button", { type: "button", class: "btn-clear", onclick: () => this.reset() }, "⟲");
    this.el = el("div", { class: "panel", "data-panel": this.id },
      el("div", { class: "head" }, this.select, this.label, this.roiButton,
        el("span", { class: "menu-wrap" },
          el("button", { type: "button", title: "export what this panel shows", class: "btn-export",
            onclick: () => this.el.classList.toggle("show-menu") }, "⇩"), this.exportMenu),
        el("button", { type: "button", title: "display settings", class: "btn-settings",
          onclick: () => { this.el.classList.toggle("show-settings"); this.resize(); } }, "⚙"),
        this.resetButton,
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
    this.overlay = el("canvas", { class: "overlay" });
    this.interaction = new Interaction(this);
    this.applySize();
    this.refreshSelect();
    this.buildSettings();
    this.updateAttrs();
  }

  closeMenu() { this.el.classList.remove("show-menu"); }

  updateAttrs(drawn) {
    const d = this.el.dataset;
    d.view = this.view;
    d.frames = String(this.frames);
    const h = this.frame ? this.frame.h : {};
    d.kind = h.kind || "";
    const labels = drawn || this.drawnLabels || {};
    d.xlabel = labels.xlabel || "";
    d.ylabel = labels.ylabel || "";
    d.title = h.title || "";
    d.zoomed = this.zoom ? "1" : "";
    if (this.geom && this.geom.ax) {
      d.xrange = this.geom.ax.xr.map(v => v.toPrecision(6)).join(",");
      d.yrange = this.geom.ax.yr.map(v => v.toPrecision(6)).join(",");
    }
    d.shape = h.shape ? h.shape.join("x") : "";
    this.canvas.setAttribute("aria-label", `${this.view}: ${h.kind || "no data"}`
      + (labels.xlabel ? `, x: ${labels.xlabel}` : "") + (labels.ylabel ? `, y: ${labels.ylabel}` : ""));
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
    this.view = name; this.frame = null; this.frames = 0; this.opts = {}; this.zoom = null;
    this.buildSettings(); this.showEmpty("waiting for data…");
    saveLayout(); sendWatch(); this.updateAttrs(); this.refreshLabel();
  }

  resetZoom() { this.zoom = null; this.dirty = true; schedule(); }

  // ⟲: an accumulating view is reset in the pipeline; any panel forgets
  // the history it shows (traces and points start afresh).
  async reset() {
    const v = S.views.get(this.view);
    if (this.frame && this.frame.h.total !== undefined) this.opts.clearedAt = this.frame.h.total;
    saveLayout(); this.dirty = true; schedule();
    if (accumulates(v) && S.control && S.control.enabled) {
      this.info.textContent = "resetting…";
      const r = await request({ op: "reset", views: [this.view] });
      this.info.textContent = r.ok ? "reset" : r.message;
    }
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
    const title = viewTitle(v);
    this.label.textContent = title || (v ? outputName(v) : "");
    this.label.title = v ? `${v.name}: ${outputName(v)}, stage ${v.stage}${title ? "\n" + title : ""}` : "";
    this.el.dataset.doc = title;
    const acc = accumulates(v);
    this.resetButton.title = acc ? "reset: the pipeline forgets what this view accumulated"
      : "clear the history shown (traces and points)";
    this.resetButton.classList.toggle("accumulating", acc);
    this.refreshRoiButton();
  }

  // -- ROIs ---------------------------------------------------------------------
  roiName() {
    const rois = roiParameters();
    if (this.opts.roi === "none") return null;
    if (this.opts.roi && rois[this.opts.roi]) return this.opts.roi;
    return this.roiNames()[0] || null;
  }

  // ROI parameters, rectangles first (the usual case), then by name.
  roiNames() {
    const rois = roiParameters();
    return Object.keys(rois).sort((p, q) => (rois[p].kind === "rect" ? 0 : 1) - (rois[q].kind === "rect" ? 0 : 1)
      || p.localeCompare(q));
  }

  roiKind(name) { const r = roiParameters()[name]; return r ? r.kind : null; }

  currentRoi(name) {
    if (this.roiDraft && this.roiDraftName === name) return this.roiDraft;
    return roiParameters()[name] || null;
  }

  refreshRoiButton() {
    const isImage = (this.frame && this.frame.h.kind === "image") || (S.views.get(this.view) || {}).output === "MATRIX";
    const name = this.roiName();
    const usable = isImage && !!name && !!(S.control && S.control.enabled);
    this.roiButton.style.display = isImage && name ? "" : "none";
    this.roiButton.disabled = !usable;
    this.roiButton.textContent = name ? `${this.roiKind(name) === "line" ? "╱" : "▭"} ${name}` : "▭ ROI";
    this.roiButton.classList.toggle("active", this.roiTool);
  }

  toggleRoiTool() {
    this.roiTool = !this.roiTool;
    this.body.classList.toggle("drawing", this.roiTool);
    this.refreshRoiButton();
  }

  // Send the drawn / edited ROI as the new parameter value.
  async commitRoi() {
    const name = this.roiDraftName, roi = this.roiDraft;
    if (this.roiTool) this.toggleRoiTool();
    this.info.textContent = `setting ${name}…`;
    const r = await request({ op: "params", values: { [name]: roiValue(roi) } });
    this.info.textContent = r.ok ? `${name} set` : r.message;
    this.el.dataset.roiReply = r.ok ? "ok" : r.message;
    // Keep the draft drawn until the control message shows the new value.
    if (!r.ok) { this.roiDraft = null; this.dirty = true; schedule(); }
  }

  onControl() {
    // The parameter arrived (or changed elsewhere): draw it, not our draft.
    const name = this.roiDraftName;
    if (this.roiDraft && name && !this.interaction.drag) {
      const cur = roiParameters()[name];
      if (cur && JSON.stringify(roiValue(cur)) === JSON.stringify(roiValue(this.roiDraft))) this.roiDraft = null;
    }
    this.refreshRoiButton();
    if (this.frame && this.frame.h.kind === "image") this.buildSettingsIfRoisChanged();
    this.dirty = true;
  }

  buildSettingsIfRoisChanged() {
    const sig = Object.keys(roiParameters()).sort().join(",");
    if (sig !== this.roiSignature) this.buildSettings();
  }

  // -- settings -------------------------------------------------------------------
  buildSettings() {
    const s = this.settings;
    const known = S.views.get(this.view);
    this.settingsFor = known ? outputName(known) : null;
    s.replaceChildren();
    const v = known || {};
    const kind = this.frame ? this.frame.h.kind : null;
    const o = this.opts;
    const redraw = () => { saveLayout(); this.dirty = true; schedule(); };
    const num = (key, label, title, onchange) => el("label", { title },
      label + " ", el("input", { type: "number", value: o[key] ?? "", step: "any", "data-opt": key,
        onchange: ev => { const x = ev.target.value === "" ? undefined : Number(ev.target.value);
          o[key] = x; (onchange || (() => {}))(); redraw(); } }));
    const check = (key, label) => el("label", {}, el("input", { type: "checkbox", checked: !!o[key],
      "data-opt": key, onchange: ev => { o[key] = ev.target.checked; redraw(); } }), " " + label);
    const choice = (key, label, values, dflt, onchange) => el("label", {}, label + " ", el("select", { "data-opt": key,
      onchange: ev => { o[key] = ev.target.value; (onchange || (() => {}))(); redraw(); } },
      ...values.map(x => { const [val, text] = Array.isArray(x) ? x : [x, x];
        return el("option", { value: val, text, selected: (o[key] || dflt) === val }); })));
    if (v.output === "SCALAR" || kind === "trace") {
      s.append(num("window", "points", "how many of the latest results to show", () => sendWatch()),
               check("markers", "markers"), check("ylog", "log y"));
    } else if (v.output === "POINTS" || kind === "points") {
      s.append(choice("mode", "show", ["scatter", "binned"], v.hint === "BINNED" ? "binned" : "scatter"),
               num("bins", "bins", "number of bins along x (binned)"),
               num("window", "points", "how many of the latest points to keep", () => sendWatch()),
               check("ylog", "log y"));
    } else if (v.output === "MATRIX" || kind === "image") {
      const rois = this.roiNames();
      this.roiSignature = Object.keys(roiParameters()).sort().join(",");
      s.append(choice("cmap", "colours", COLORMAP_NAMES, "viridis"),
               choice("levels", "range", [["auto", "auto (min–max)"], ["percentile", "percentile"], ["manual", "fixed"]], "auto"),
               num("plo", "lo %", "lower percentile (percentile range; default 1)"),
               num("phi", "hi %", "upper percentile (percentile range; default 99)"),
               num("zmin", "min", "lower level (fixed range)"), num("zmax", "max", "upper level (fixed range)"),
               check("log", "log colour"), check("fill", "fill panel"), check("flipy", "y up"));
      if (rois.length) {
        s.append(choice("roi", "ROI", [...rois, "none"], rois[0], () => this.refreshRoiButton()));
      }
    } else if (v.output === "VECTOR" || kind === "line" || kind === "bars") {
      s.append(check("ylog", "log y"), check("markers", "markers"));
    } else {
      s.append(el("span", { class: "muted", text: "no settings for this view" }));
    }
  }

  showEmpty(text) {
    this.body.replaceChildren(el("div", { class: "empty", text }));
    this.mode = "empty";
    this.geom = null;
  }

  ensureCanvas() {
    if (this.mode !== "canvas") { this.body.replaceChildren(this.canvas, this.overlay); this.mode = "canvas"; }
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
    if (first) { this.buildSettings(); this.refreshRoiButton(); }
    this.dirty = true;
  }

  // The zoomed ranges if the panel is zoomed, else the automatic ones.
  ranges(xr, yr) { return this.zoom ? [this.zoom.x, this.zoom.y] : [xr, yr]; }

  draw() {
    if (!this.dirty || !this.frame) return;
    this.dirty = false;
    const { h, a } = this.frame;
    let labels = {};
    try {
      switch (h.kind) {
        case "trace": labels = this.drawTrace(h, a); break;
        case "line": case "bars": labels = this.drawLines(h, a); break;
        case "image": labels = this.drawImage(h, a); break;
        case "points": labels = this.drawPoints(h, a); break;
        case "text": this.drawText(h.text); break;
        case "html": this.drawHtml(h.text); break;
        case "value": this.drawValue(h.value); break;
        default: this.showEmpty("no result yet");
      }
    } catch (e) {
      this.showEmpty("cannot draw: " + e);
      console.error(e);
    }
    this.drawnLabels = labels || {};
    this.frames++;
    const now = performance.now();
    this.drawTimes.push(now);
    while (this.drawTimes.length && this.drawTimes[0] < now - 2000) this.drawTimes.shift();
    this.fpsEl.textContent = `${(this.drawTimes.length / 2).toFixed(1)} fps`;
    if (!this.info.textContent.endsWith("…")) {
      this.info.textContent = (h.event_id !== null && h.event_id !== undefined ? `event ${h.event_id}` : "")
        + (h.note ? ` · ${h.note}` : "") + (h.factor > 1 ? ` · ${h.shape[0]}×${h.shape[1]} shown ÷${h.factor}` : "")
        + (this.total !== undefined && h.kind === "bars" ? ` · ${fmt(this.total)} counts` : "")
        + (this.zoom ? " · zoomed (double-click resets)" : "");
    }
    this.el.dataset.total = this.total !== undefined && h.kind === "bars" ? String(this.total) : "";
    this.updateAttrs(this.drawnLabels);
    if (this.mode === "canvas") this.interaction.drawOverlay();
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

  // The first history row shown (after a clear, within the window).
  visibleStart() {
    const { h, a } = this.frame;
    const n = a.x.length;
    let start = 0;
    const cleared = this.opts.clearedAt;
    if (cleared !== undefined && h.total !== undefined) {
      if (cleared > h.total) delete this.opts.clearedAt;     // history restarted
      else start = Math.max(0, n - (h.total - cleared));
    }
    return Math.max(start, n - (this.window() || n));      // another panel may want more
  }

  yRange(y, start, end, pad, ylog) {
    if (ylog) { const r = positiveRange(y, start, end); return r ? [r[0] / 1.5, r[1] * 1.5] : [0.1, 10]; }
    return padRange(finiteRange(y, start, end), pad);
  }

  // SCALAR: a rolling trace against train id.
  drawTrace(h, a) {
    const v = S.views.get(this.view) || {};
    const x = a.x, y = a.y, n = x.length;
    const start = this.visibleStart();
    const [ctx, w, hh] = this.ensureCanvas();
    const slow = v.hint === "SLOW";
    const big = slow ? 46 : 0;
    if (slow) {
      ctx.fillStyle = "#1f2933"; ctx.font = "600 30px ui-monospace, monospace"; ctx.textAlign = "center";
      ctx.textBaseline = "top";
      ctx.fillText(n > start ? fmt(y[n - 1], 6) : "–", w / 2, 6);
    }
    const ylog = !!this.opts.ylog;
    const [xr, yr] = this.ranges(padRange(finiteRange(x, start, n), 0.02), this.yRange(y, start, n, 0.08, ylog));
    ctx.save(); ctx.translate(0, big);
    const ax = new Axes(ctx, w, hh - big, { xr, yr, ylog, title: null });
    const labels = { xlabel: h.xlabel, ylabel: h.ylabel || viewTitle(v) || shortName(this.view) };
    ax.draw(labels);
    ax.clip();
    ctx.strokeStyle = COLORS[0]; ctx.fillStyle = COLORS[0]; ctx.lineWidth = 1.5;
    const fast = v.hint === "FAST";
    const ok = val => Number.isFinite(val) && (!ylog || val > 0);
    if (!slow) {
      ctx.beginPath();
      let pen = false;
      for (let i = start; i < n; i++) {
        if (!ok(y[i])) { pen = false; continue; }
        const px = ax.px(x[i]), py = ax.py(y[i]);
        if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        pen = true;
      }
      ctx.stroke();
    }
    const markers = slow || this.opts.markers || (!fast && n - start <= 300);
    if (markers) {
      for (let i = start; i < n; i++) {
        if (!ok(y[i])) continue;
        ctx.beginPath(); ctx.arc(ax.px(x[i]), ax.py(y[i]), slow ? 3 : 2, 0, 2 * Math.PI); ctx.fill();
      }
    }
    ctx.restore(); ctx.restore();
    this.geom = { ax, dy: big };
    return labels;
  }

  // VECTOR: lines (or bars for histograms and distributions).
  drawLines(h, a) {
    const v = S.views.get(this.view) || {};
    const x = a.x, y = a.y, nx = x.length, lines = h.lines || 1;
    const [ctx, w, hh] = this.ensureCanvas();
    const ylog = !!this.opts.ylog;
    const bars = h.kind === "bars";
    let xr = finiteRange(x) || [0, 1];
    if (bars) { const bw = (h.width || 1) / 2; xr = [xr[0] - bw, xr[1] + bw]; }
    let yr;
    if (ylog) yr = this.yRange(y, 0, y.length, 0, true);
    else {
      yr = finiteRange(y);
      if (bars && yr) yr = [Math.min(0, yr[0]), Math.max(0, yr[1])];
      yr = padRange(yr, 0.05);
    }
    if (bars) { let t = 0; for (const c of y) if (Number.isFinite(c)) t += c; this.total = t; }
    [xr, yr] = this.ranges(bars ? xr : padRange(xr, 0), yr);
    const ax = new Axes(ctx, w, hh, { xr, yr, ylog, title: h.title });
    // A histogram's x axis says what was binned, unless the result says more.
    let xlabel = h.xlabel;
    if (bars && v.binned && (!xlabel || xlabel === "bin")) xlabel = v.binned;
    const labels = { xlabel, ylabel: h.ylabel || (bars && v.binned ? "counts" : ""), title: h.title };
    ax.draw(labels);
    ax.clip();
    for (let l = 0; l < lines; l++) {
      const color = COLORS[l % COLORS.length];
      const off = l * nx;
      if (bars) {
        ctx.fillStyle = color; ctx.globalAlpha = lines > 1 ? 0.5 : 0.85;
        const bw = Math.max(1, Math.abs(ax.px(x[0] + (h.width || 1)) - ax.px(x[0])) - (nx < 200 ? 1 : 0));
        const base = ylog ? ax.y0 + ax.h : ax.py(0);
        for (let i = 0; i < nx; i++) {
          const val = y[off + i];
          if (!Number.isFinite(val) || (ylog && val <= 0)) continue;
          const py = ax.py(val);
          ctx.fillRect(ax.px(x[i]) - bw / 2, Math.min(py, base), bw, Math.abs(base - py));
        }
        ctx.globalAlpha = 1;
      } else {
        ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
        let pen = false;
        for (let i = 0; i < nx; i++) {
          const val = y[off + i];
          if (!Number.isFinite(val) || (ylog && val <= 0)) { pen = false; continue; }
          const px = ax.px(x[i]), py = ax.py(val);
          if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
          pen = true;
        }
        ctx.stroke();
        if (this.opts.markers) {
          ctx.fillStyle = color;
          for (let i = 0; i < nx; i++) {
            const val = y[off + i];
            if (Number.isFinite(val)) { ctx.beginPath(); ctx.arc(ax.px(x[i]), ax.py(val), 2, 0, 7); ctx.fill(); }
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
    return labels;
  }

  // The colour range [lo, hi] of an image, by the panel's setting.
  levels(h, z) {
    const o = this.opts;
    let lo, hi;
    if (o.levels === "manual" && Number.isFinite(o.zmin) && Number.isFinite(o.zmax)) {
      lo = o.zmin; hi = o.zmax;
    } else if (o.levels === "percentile") {
      const plo = Number.isFinite(o.plo) ? o.plo : 1, phi = Number.isFinite(o.phi) ? o.phi : 99;
      [lo, hi] = quantiles(z, [plo / 100, phi / 100]);
    } else {
      lo = h.min; hi = h.max;
    }
    if (lo === null || lo === undefined || !Number.isFinite(lo)) { lo = 0; hi = 1; }
    if (!(hi > lo)) hi = lo + (Math.abs(lo) || 1) * 1e-6 + 1e-12;
    return [lo, hi];
  }

  // MATRIX / IMAGE: a heat map with a colour bar, adjustable levels and ROIs.
  drawImage(h, a) {
    const z = a.z, [rows, cols] = h.dshape;
    const o = this.opts;
    const [ctx, w, hh] = this.ensureCanvas();
    const [lo, hi] = this.levels(h, z);
    const log = !!o.log && hi > 0;
    const llo = log ? Math.log10(lo > 0 ? lo : hi * 1e-4) : lo, lhi = log ? Math.log10(hi) : hi;
    // pixels, through the colour map's lookup table
    if (!this.off || this.off.width !== cols || this.off.height !== rows) {
      this.off = document.createElement("canvas"); this.off.width = cols; this.off.height = rows;
      this.offImg = this.off.getContext("2d").createImageData(cols, rows);
      this.offPx = new Uint32Array(this.offImg.data.buffer);
    }
    const table = lut(o.cmap || "viridis");
    const table32 = new Uint32Array(table.buffer);
    const px = this.offPx;
    const nan = new Uint32Array(new Uint8ClampedArray([220, 220, 220, 255]).buffer)[0];
    const scale = 255 / (lhi - llo);
    for (let i = 0; i < z.length; i++) {
      let v = z[i];
      if (!(v === v)) { px[i] = nan; continue; }   // NaN
      if (log) v = v > 0 ? Math.log10(v) : llo;
      let k = ((v - llo) * scale) | 0;
      k = k < 0 ? 0 : k > 255 ? 255 : k;
      px[i] = table32[k];
    }
    this.off.getContext("2d").putImageData(this.offImg, 0, 0);
    // geometry: pixel centres at the coordinates, edges half a pixel out
    const [x0, x1] = h.xrange, [y0, y1] = h.yrange;
    const dx = h.shape[1] > 1 && x1 !== x0 ? (x1 - x0) / (h.shape[1] - 1) : 1;
    const dy = h.shape[0] > 1 && y1 !== y0 ? (y1 - y0) / (h.shape[0] - 1) : 1;
    const fxr = [x0 - dx / 2, x0 - dx / 2 + dx * h.shape[1]];
    const fyr = [y0 - dy / 2, y0 - dy / 2 + dy * h.shape[0]];
    const [xr, yr] = this.ranges(fxr, fyr);
    const ax = new Axes(ctx, w, hh, { xr, yr, yflip: !o.flipy, title: h.title, right: 78 });
    if (!o.fill) {
      // square data units: shrink the plot rectangle to the shown aspect
      const aspect = Math.abs((xr[1] - xr[0]) / (yr[1] - yr[0]));
      if (Number.isFinite(aspect) && aspect > 0) {
        if (ax.w / ax.h > aspect) { const nw = ax.h * aspect; ax.x0 += (ax.w - nw) / 2; ax.w = nw; }
        else { const nh = ax.w / aspect; ax.h = nh; }
      }
    }
    ctx.imageSmoothingEnabled = false;
    ax.clip();
    // the whole image placed by its data extent (zoom moves it; the clip cuts it)
    const ix0 = ax.px(fxr[0]), ix1 = ax.px(fxr[1]), iy0 = ax.py(fyr[0]), iy1 = ax.py(fyr[1]);
    if (o.flipy) {
      ctx.translate(0, iy0 + iy1); ctx.scale(1, -1);
    }
    ctx.drawImage(this.off, Math.min(ix0, ix1), Math.min(iy0, iy1), Math.abs(ix1 - ix0), Math.abs(iy1 - iy0));
    ctx.restore();
    const ylabel = h.ylabel, xlabel = h.xlabel;
    ax.draw({ xlabel, ylabel, title: h.title, grid: false });
    // ROIs of the context, the selected one with handles
    const imageGeom = imageGeometry(h);
    const selected = this.roiName();
    const rois = roiParameters();
    if (Object.keys(rois).length) {
      ax.clip();
      for (const [name, roi] of Object.entries(rois)) {
        if (name === this.roiDraftName && this.roiDraft) continue;
        drawRoi(ctx, ax, imageGeom, roi, name, name === selected);
      }
      if (this.roiDraft) drawRoi(ctx, ax, imageGeom, this.roiDraft, this.roiDraftName, true);
      ctx.restore();
    }
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
    this.geom = { ax, dy: 0, image: { z, rows, cols, xr: fxr, yr: fyr }, imageGeom };
    this.levelsShown = [lo, hi];
    this.el.dataset.levels = `${lo.toPrecision(6)},${hi.toPrecision(6)}`;
    // the frame's own extremes, with its levels (a percentile range lies within them)
    this.el.dataset.extremes = Number.isFinite(h.min) && Number.isFinite(h.max)
      ? `${Number(h.min).toPrecision(6)},${Number(h.max).toPrecision(6)}` : "";
    this.el.dataset.clog = log ? "1" : "";
    return { xlabel, ylabel };
  }

  // POINTS: scatter, or the mean of y in bins of x.
  drawPoints(h, a) {
    const v = S.views.get(this.view) || {};
    const x = a.x, y = a.y, n = x.length;
    const start = this.visibleStart();
    const [ctx, w, hh] = this.ensureCanvas();
    const mode = this.opts.mode || (v.hint === "BINNED" ? "binned" : "scatter");
    const ylog = !!this.opts.ylog;
    const xr0 = finiteRange(x, start, n);
    let bx = null, by = null;
    if (mode === "binned" && xr0) {
      const nb = Math.max(1, Math.min(1000, this.opts.bins || 50));
      const sums = new Float64Array(nb), bcount = new Float64Array(nb);
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
    const yr0 = mode === "binned" && by && by.length ? this.yRange(by, 0, by.length, 0.08, ylog)
      : this.yRange(y, start, n, 0.08, ylog);
    const [xr, yr] = this.ranges(padRange(xr0, 0.03), yr0);
    const ax = new Axes(ctx, w, hh, { xr, yr, ylog, title: h.title });
    const labels = { xlabel: h.xlabel, ylabel: h.ylabel, title: h.title };
    ax.draw(labels);
    ax.clip();
    const ok = val => Number.isFinite(val) && (!ylog || val > 0);
    if (mode === "binned" && bx) {
      ctx.fillStyle = "#adb5bd"; ctx.globalAlpha = 0.35;
      for (let i = start; i < n; i++) if (ok(y[i])) ctx.fillRect(ax.px(x[i]) - 1, ax.py(y[i]) - 1, 2, 2);
      ctx.globalAlpha = 1; ctx.strokeStyle = COLORS[1]; ctx.fillStyle = COLORS[1]; ctx.lineWidth = 2;
      ctx.beginPath();
      bx.forEach((xx, i) => { const px = ax.px(xx), py = ax.py(by[i]); if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py); });
      ctx.stroke();
      bx.forEach((xx, i) => { if (ok(by[i])) { ctx.beginPath(); ctx.arc(ax.px(xx), ax.py(by[i]), 3, 0, 7); ctx.fill(); } });
    } else {
      ctx.fillStyle = COLORS[0]; ctx.globalAlpha = n - start > 2000 ? 0.4 : 0.75;
      for (let i = start; i < n; i++) {
        if (!Number.isFinite(x[i]) || !ok(y[i])) continue;
        ctx.beginPath(); ctx.arc(ax.px(x[i]), ax.py(y[i]), 2.5, 0, 7); ctx.fill();
      }
      ctx.globalAlpha = 1;
    }
    ctx.restore();
    ctx.fillStyle = "#7b8794"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "top";
    ctx.fillText(`${n - start} points`, ax.x0 + ax.w - 4, ax.y0 + 4);
    this.geom = { ax, dy: 0 };
    return labels;
  }
}

function shortName(name) { return name ? name.split("/").pop() : ""; }

export function addPanel(cfg, save) {
  const p = new Panel(cfg || {});
  S.panels.push(p);
  document.getElementById("panels").append(p.el);
  document.getElementById("no-panels").style.display = "none";
  if (save !== false) { saveLayout(); sendWatch(); }
  if (!p.view) p.showEmpty("choose a view above");
  else p.showEmpty("waiting for data…");
  return p;
}

export function removePanel(p) {
  S.panels = S.panels.filter(q => q !== p);
  p.el.remove();
  if (!S.panels.length) document.getElementById("no-panels").style.display = "";
  saveLayout(); sendWatch();
}

export function removeAllPanels() {
  for (const p of S.panels) p.el.remove();
  S.panels = [];
  document.getElementById("no-panels").style.display = "";
}
