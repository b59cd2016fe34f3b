// Small helpers shared by every module: DOM building, number formatting,
// ranges and axis ticks.  Nothing here knows about panels or the server.

export const COLORS = ["#2f6fde", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0c8599",
                       "#b08900", "#5f3dc4", "#d6336c", "#495057"];

// el("div", {class: "x", onclick: f, text: "t"}, child, ...): text is set as
// text, never parsed as markup, so view names and errors cannot inject HTML.
export function el(tag, attrs, ...children) {
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

export function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "-∞";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(digits ?? 2);
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(digits ?? 4)));
}

export function fmtRate(r) { return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2); }

export function outputName(v) {
  if (!v || !v.output) return "?";
  return v.hint ? `${v.output}·${v.hint}` : v.output;
}

// [min, max] of the finite values of arr[start:end:step], or null.
export function finiteRange(arr, start, end, step) {
  let lo = Infinity, hi = -Infinity;
  for (let i = start ?? 0; i < (end ?? arr.length); i += (step ?? 1)) {
    const v = arr[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : null;
}

// [min, max] of the positive values (for log axes), or null.
export function positiveRange(arr, start, end) {
  let lo = Infinity, hi = -Infinity;
  for (let i = start ?? 0; i < (end ?? arr.length); i++) {
    const v = arr[i];
    if (v > 0) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  return lo <= hi ? [lo, hi] : null;
}

export function padRange(r, frac) {
  if (!r) return [0, 1];
  let [lo, hi] = r;
  if (lo === hi) { const d = lo === 0 ? 1 : Math.abs(lo) * 0.05; return [lo - d, hi + d]; }
  const d = (hi - lo) * (frac ?? 0.05);
  return [lo - d, hi + d];
}

export function niceTicks(lo, hi, count) {
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
export function logTicks(llo, lhi) {
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

export function tickLabel(t, ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : Math.abs(t) || 1;
  const a = Math.max(...ticks.map(Math.abs));
  if (a >= 1e6 || (a > 0 && a < 1e-3)) return t.toExponential(Math.max(0, Math.min(6,
    Math.ceil(Math.log10(a / step)))));
  const decimals = Math.max(0, Math.min(8, -Math.floor(Math.log10(step) + 1e-9)));
  return t.toFixed(decimals);
}

// The q-quantiles (0..1) of the finite values of arr, from a sample of at
// most ~20000 values: percentile colour ranges of a 256x256 image cost
// a sort of 20000 numbers, not 65536.
export function quantiles(arr, qs) {
  const step = Math.max(1, Math.floor(arr.length / 20000));
  const sample = [];
  for (let i = 0; i < arr.length; i += step) if (Number.isFinite(arr[i])) sample.push(arr[i]);
  if (!sample.length) return qs.map(() => null);
  sample.sort((p, q) => p - q);
  return qs.map(q => sample[Math.max(0, Math.min(sample.length - 1, Math.round(q * (sample.length - 1))))]);
}
