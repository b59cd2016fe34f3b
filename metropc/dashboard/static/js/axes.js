// A plot rectangle with linear x and linear-or-log y scales, ticks, grid
// and labels, drawn on a 2-D canvas context.  Renderers map data to pixels
// with px/py and back with dataX/dataY (the crosshair, zoom and ROIs).

import { fmt, logTicks, niceTicks, tickLabel } from "./util.js";

export class Axes {
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
  // y in axis units: log10 on a log axis (where zoom and pan are linear)
  fy(v) { return this.ylog ? (v > 0 ? Math.log10(v) : NaN) : v; }
  unfy(u) { return this.ylog ? Math.pow(10, u) : u; }
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
    return this.unfy(lo + f * (hi - lo));
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
      yt = logTicks(Math.log10(this.yr[0]), Math.log10(this.yr[1])).map(t => Math.pow(10, t));
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
