// Regions of interest on image panels: the mapping between data
// coordinates (what the axes show) and pixel indices of the full-resolution
// image (what a kernel slices, metropc.roi.RectROI / LineROI), drawing, and
// hit-testing for editing.  Pixel i of a row is centred on x0 + i*dx, so its
// edges are half a pixel either side; a RectROI's x..x+width are edges.

export function imageGeometry(h) {
  const [H, W] = h.shape, [x0, x1] = h.xrange, [y0, y1] = h.yrange;
  const dx = W > 1 && x1 !== x0 ? (x1 - x0) / (W - 1) : 1;
  const dy = H > 1 && y1 !== y0 ? (y1 - y0) / (H - 1) : 1;
  return { x0, y0, dx, dy, W, H };
}

const edgeX = (g, i) => g.x0 + (i - 0.5) * g.dx;
const edgeY = (g, i) => g.y0 + (i - 0.5) * g.dy;
const toEdgeX = (g, X) => (X - g.x0) / g.dx + 0.5;
const toEdgeY = (g, Y) => (Y - g.y0) / g.dy + 0.5;
const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

// A RectROI {x, y, width, height} spanning data points a and b ({x, y}),
// rounded to whole pixels, inside the image, at least 1 x 1.
export function rectFromData(g, a, b) {
  let xa = clamp(Math.round(toEdgeX(g, a.x)), 0, g.W), xb = clamp(Math.round(toEdgeX(g, b.x)), 0, g.W);
  let ya = clamp(Math.round(toEdgeY(g, a.y)), 0, g.H), yb = clamp(Math.round(toEdgeY(g, b.y)), 0, g.H);
  if (xa > xb) [xa, xb] = [xb, xa];
  if (ya > yb) [ya, yb] = [yb, ya];
  const x = Math.min(xa, g.W - 1), y = Math.min(ya, g.H - 1);
  return { x, y, width: Math.max(1, xb - x), height: Math.max(1, yb - y) };
}

// A LineROI {x0, y0, x1, y1} (pixel centres, to 0.1 px) from data points.
export function lineFromData(g, a, b) {
  const r = v => Math.round(v * 10) / 10;
  return { x0: r(clamp((a.x - g.x0) / g.dx, 0, g.W - 1)), y0: r(clamp((a.y - g.y0) / g.dy, 0, g.H - 1)),
           x1: r(clamp((b.x - g.x0) / g.dx, 0, g.W - 1)), y1: r(clamp((b.y - g.y0) / g.dy, 0, g.H - 1)) };
}

// Canvas pixel coordinates of an ROI's handles.
function handles(ax, g, roi) {
  if (roi.kind === "line") {
    return { p0: [ax.px(g.x0 + roi.x0 * g.dx), ax.py(g.y0 + roi.y0 * g.dy)],
             p1: [ax.px(g.x0 + roi.x1 * g.dx), ax.py(g.y0 + roi.y1 * g.dy)] };
  }
  const l = ax.px(edgeX(g, roi.x)), r = ax.px(edgeX(g, roi.x + roi.width));
  const t = ax.py(edgeY(g, roi.y)), b = ax.py(edgeY(g, roi.y + roi.height));
  return { c00: [l, t], c10: [r, t], c01: [l, b], c11: [r, b] };
}

export function drawRoi(ctx, ax, g, roi, name, selected) {
  const hs = handles(ax, g, roi);
  ctx.save();
  ctx.lineWidth = selected ? 2 : 1.5;
  ctx.strokeStyle = selected ? "#ff2d55" : "#ffffff";
  ctx.setLineDash(selected ? [] : [5, 3]);
  ctx.beginPath();
  let lx, ly;
  if (roi.kind === "line") {
    ctx.moveTo(...hs.p0); ctx.lineTo(...hs.p1); [lx, ly] = hs.p0;
  } else {
    const [l, t] = hs.c00, [r, b] = hs.c11;
    ctx.rect(Math.min(l, r), Math.min(t, b), Math.abs(r - l), Math.abs(b - t));
    lx = Math.min(l, r); ly = Math.min(t, b);
  }
  ctx.stroke();
  ctx.setLineDash([]);
  if (selected) {
    ctx.fillStyle = "#ff2d55";
    for (const [x, y] of Object.values(hs)) ctx.fillRect(x - 3, y - 3, 6, 6);
  }
  ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "bottom"; ctx.textAlign = "left";
  ctx.fillStyle = selected ? "#ff2d55" : "#ffffff";
  ctx.fillText(name, lx + 2, ly - 2);
  ctx.restore();
}

// What part of `roi` is under canvas point (px, py): a handle name, "move"
// or null.
export function hitRoi(ax, g, roi, px, py) {
  const hs = handles(ax, g, roi);
  for (const [name, [x, y]] of Object.entries(hs)) if (Math.abs(px - x) <= 6 && Math.abs(py - y) <= 6) return name;
  if (roi.kind === "line") {
    const [ax0, ay0] = hs.p0, [ax1, ay1] = hs.p1;
    const len2 = (ax1 - ax0) ** 2 + (ay1 - ay0) ** 2 || 1;
    const t = clamp(((px - ax0) * (ax1 - ax0) + (py - ay0) * (ay1 - ay0)) / len2, 0, 1);
    const d = Math.hypot(px - (ax0 + t * (ax1 - ax0)), py - (ay0 + t * (ay1 - ay0)));
    return d <= 5 ? "move" : null;
  }
  const xs = [hs.c00[0], hs.c11[0]].sort((p, q) => p - q), ys = [hs.c00[1], hs.c11[1]].sort((p, q) => p - q);
  return px >= xs[0] && px <= xs[1] && py >= ys[0] && py <= ys[1] ? "move" : null;
}

// `roi` edited by dragging `part` from data point a to data point b.
export function dragRoi(g, roi, part, a, b) {
  if (roi.kind === "line") {
    const ddx = (b.x - a.x) / g.dx, ddy = (b.y - a.y) / g.dy;
    const r = v => Math.round(v * 10) / 10;
    const out = { ...roi };
    if (part === "p0" || part === "move") { out.x0 = r(roi.x0 + ddx); out.y0 = r(roi.y0 + ddy); }
    if (part === "p1" || part === "move") { out.x1 = r(roi.x1 + ddx); out.y1 = r(roi.y1 + ddy); }
    return out;
  }
  if (part === "move") {
    const sx = Math.round((b.x - a.x) / g.dx), sy = Math.round((b.y - a.y) / g.dy);
    return { ...roi, x: clamp(roi.x + sx, 0, g.W - roi.width), y: clamp(roi.y + sy, 0, g.H - roi.height) };
  }
  // a corner: the opposite corner stays where it is
  const fixed = { x: edgeX(g, part[1] === "0" ? roi.x + roi.width : roi.x),
                  y: edgeY(g, part[2] === "0" ? roi.y + roi.height : roi.y) };
  const moved = { x: edgeX(g, part[1] === "0" ? roi.x : roi.x + roi.width) + (b.x - a.x),
                  y: edgeY(g, part[2] === "0" ? roi.y : roi.y + roi.height) + (b.y - a.y) };
  return { kind: "rect", ...rectFromData(g, fixed, moved) };
}

// The fields the server takes for an ROI parameter (no "kind").
export function roiValue(roi) {
  return roi.kind === "line" ? { x0: roi.x0, y0: roi.y0, x1: roi.x1, y1: roi.y1 }
    : { x: roi.x, y: roi.y, width: roi.width, height: roi.height };
}
