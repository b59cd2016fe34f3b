// Mouse interaction with a plot panel: wheel zoom around the cursor, drag
// to pan, double-click to return to the automatic range, a crosshair with
// a readout of the data under it, and drawing / editing ROIs on images.
//
// The zoom is a data range per axis that replaces the automatic one while
// set (panel.zoom); it is not saved with the layout, since live data moves
// on.  The crosshair is drawn on a transparent canvas over the plot, so
// moving the mouse never redraws the data.

import { dragRoi, hitRoi, imageGeometry, lineFromData, rectFromData } from "./roi.js";
import { schedule } from "./connection.js";
import { fmt } from "./util.js";

const WHEEL_STEP = 0.0015;   // zoom factor per wheel delta unit: 100 (one notch) = 1.16x

export class Interaction {
  constructor(panel) {
    this.panel = panel;
    this.drag = null;       // {mode: "pan"|"draw"|"edit", ...} while a button is down
    this.last = null;       // last pointer position, for the crosshair
    const body = panel.body;
    body.addEventListener("wheel", ev => this.onWheel(ev), { passive: false });
    body.addEventListener("pointerdown", ev => this.onDown(ev));
    body.addEventListener("pointermove", ev => this.onMove(ev));
    body.addEventListener("pointerup", ev => this.onUp(ev));
    body.addEventListener("pointercancel", () => { this.drag = null; });
    body.addEventListener("pointerleave", () => { this.last = null; this.drawOverlay(); panel.hover.textContent = ""; });
    body.addEventListener("dblclick", ev => { if (this.geom()) { ev.preventDefault(); panel.resetZoom(); } });
  }

  geom() {
    const p = this.panel;
    return p.mode === "canvas" && p.geom && p.geom.ax ? p.geom : null;
  }

  point(ev) {
    const r = this.panel.canvas.getBoundingClientRect();
    const g = this.geom();
    return { px: ev.clientX - r.left, py: ev.clientY - r.top - (g ? g.dy : 0) };
  }

  // The current ranges, as axis units (log10 for a log y axis).
  ranges(ax) {
    return { x: [...ax.xr], y: [ax.fy(ax.yr[0]), ax.fy(ax.yr[1])] };
  }

  setRanges(ax, x, y) {
    this.panel.zoom = { x, y: [ax.unfy(y[0]), ax.unfy(y[1])] };
    this.panel.dirty = true;
    schedule();
  }

  onWheel(ev) {
    const g = this.geom();
    if (!g) return;
    const { px, py } = this.point(ev);
    if (!g.ax.inside(px, py)) return;
    ev.preventDefault();
    const ax = g.ax;
    const f = Math.exp(ev.deltaY * WHEEL_STEP);
    const { x, y } = this.ranges(ax);
    const cx = ax.dataX(px), cy = ax.fy(ax.dataY(py));
    // shift: x only, alt: y only (images always both, to keep square pixels)
    const zx = !ev.altKey || g.image, zy = !ev.shiftKey || g.image;
    const nx = zx ? [cx + (x[0] - cx) * f, cx + (x[1] - cx) * f] : x;
    const ny = zy ? [cy + (y[0] - cy) * f, cy + (y[1] - cy) * f] : y;
    this.setRanges(ax, nx, ny);
  }

  onDown(ev) {
    const g = this.geom();
    if (!g || ev.button !== 0) return;
    const { px, py } = this.point(ev);
    if (!g.ax.inside(px, py)) return;
    const p = this.panel;
    const at = { x: g.ax.dataX(px), y: g.ax.dataY(py) };
    const roiName = p.roiName();
    const roi = roiName ? p.currentRoi(roiName) : null;
    if (g.image && p.roiTool && roiName) {
      this.drag = { mode: "draw", start: at, kind: p.roiKind(roiName), name: roiName };
    } else if (g.image && roi && hitRoi(g.ax, g.imageGeom, roi, px, py)) {
      this.drag = { mode: "edit", start: at, roi, part: hitRoi(g.ax, g.imageGeom, roi, px, py), name: roiName };
    } else {
      this.drag = { mode: "pan", px, py, ranges: this.ranges(g.ax), ax: g.ax };
    }
    p.body.setPointerCapture(ev.pointerId);
    ev.preventDefault();
  }

  onMove(ev) {
    const g = this.geom();
    if (!g) return;
    const pt = this.point(ev);
    this.last = pt;
    const d = this.drag, p = this.panel;
    if (d && d.mode === "pan") {
      const ax = d.ax;
      const dx = (pt.px - d.px) / ax.w * (d.ranges.x[1] - d.ranges.x[0]);
      let dy = (pt.py - d.py) / ax.h * (d.ranges.y[1] - d.ranges.y[0]);
      if (!ax.yflip) dy = -dy;
      if (dx || dy) {
        this.setRanges(ax, [d.ranges.x[0] - dx, d.ranges.x[1] - dx], [d.ranges.y[0] - dy, d.ranges.y[1] - dy]);
        d.moved = true;
      }
    } else if (d && (d.mode === "draw" || d.mode === "edit")) {
      const at = { x: g.ax.dataX(pt.px), y: g.ax.dataY(pt.py) };
      const ig = g.imageGeom;
      p.roiDraft = d.mode === "draw"
        ? (d.kind === "line" ? { kind: "line", ...lineFromData(ig, d.start, at) } : { kind: "rect", ...rectFromData(ig, d.start, at) })
        : dragRoi(ig, d.roi, d.part, d.start, at);
      p.roiDraftName = d.name;
      p.dirty = true; schedule();
    }
    this.readout(pt);
    this.drawOverlay();
  }

  onUp(ev) {
    const d = this.drag;
    this.drag = null;
    if (!d) return;
    try { this.panel.body.releasePointerCapture(ev.pointerId); } catch (e) { /* already released */ }
    if ((d.mode === "draw" || d.mode === "edit") && this.panel.roiDraft) this.panel.commitRoi();
  }

  // The footer readout: data coordinates and, on images, the pixel and value.
  readout(pt) {
    const g = this.geom(), p = this.panel;
    if (!g || !g.ax.inside(pt.px, pt.py)) { p.hover.textContent = ""; return; }
    const x = g.ax.dataX(pt.px), y = g.ax.dataY(pt.py);
    let text = `x ${fmt(x)}  y ${fmt(y)}`;
    if (g.image) {
      const { z, rows, cols, xr, yr } = g.image;
      const c = Math.floor((x - xr[0]) / (xr[1] - xr[0]) * cols);
      const r = Math.floor((y - yr[0]) / (yr[1] - yr[0]) * rows);
      if (c >= 0 && c < cols && r >= 0 && r < rows) text += `  z ${fmt(z[r * cols + c])}`;
    }
    p.hover.textContent = text;
  }

  // The crosshair, on the overlay canvas (cleared when the mouse leaves).
  drawOverlay() {
    const p = this.panel, o = p.overlay, g = this.geom();
    const dpr = window.devicePixelRatio || 1;
    if (o.width !== p.canvas.width || o.height !== p.canvas.height) { o.width = p.canvas.width; o.height = p.canvas.height; }
    const ctx = o.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, o.width, o.height);
    const pt = this.last;
    if (!g || !pt || !g.ax.inside(pt.px, pt.py)) return;
    const ax = g.ax;
    ctx.setTransform(dpr, 0, 0, dpr, 0, g.dy * dpr);
    ctx.strokeStyle = g.image ? "rgba(255,255,255,0.8)" : "rgba(31,41,51,0.55)";
    ctx.lineWidth = 1; ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(ax.x0, Math.round(pt.py) + 0.5); ctx.lineTo(ax.x0 + ax.w, Math.round(pt.py) + 0.5);
    ctx.moveTo(Math.round(pt.px) + 0.5, ax.y0); ctx.lineTo(Math.round(pt.px) + 0.5, ax.y0 + ax.h);
    ctx.stroke();
  }
}

export { imageGeometry };
