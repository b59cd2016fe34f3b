// Export what a panel shows: the canvas as PNG, or its data as CSV.
//
// The CSV holds the data of the current frame as drawn, within the zoomed
// range when the panel is zoomed: x,y columns for traces, points and
// histograms (one y column per line), and for images the displayed
// (block-averaged) matrix with its x coordinates as the header row and y
// coordinates as the first column.

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url; a.download = name; a.style.display = "none";
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function fileName(panel, ext) {
  const stamp = new Date().toISOString().replace(/[:]/g, "").replace(/\..*/, "");
  return `${(panel.view || "panel").replace(/[^\w.-]+/g, "_")}-${stamp}.${ext}`;
}

export function exportPNG(panel) {
  if (panel.mode !== "canvas") return false;
  panel.canvas.toBlob(blob => { if (blob) download(blob, fileName(panel, "png")); }, "image/png");
  return true;
}

const num = v => (Number.isFinite(v) ? String(v) : "");

// The CSV text of what `panel` shows (also used by the tests through the
// download it produces).
export function panelCSV(panel) {
  if (!panel.frame) return null;
  const { h, a } = panel.frame;
  const zoom = panel.zoom;
  const inX = x => !zoom || (x >= Math.min(...zoom.x) && x <= Math.max(...zoom.x));
  const lines = [];
  if (h.kind === "image") {
    const [rows, cols] = h.dshape, z = a.z, g = panel.geom && panel.geom.image;
    if (!g) return null;
    const xs = Array.from({ length: cols }, (_, c) => g.xr[0] + (c + 0.5) * (g.xr[1] - g.xr[0]) / cols);
    const ys = Array.from({ length: rows }, (_, r) => g.yr[0] + (r + 0.5) * (g.yr[1] - g.yr[0]) / rows);
    const inY = y => !zoom || (y >= Math.min(...zoom.y) && y <= Math.max(...zoom.y));
    const cs = xs.map((x, c) => c).filter(c => inX(xs[c]));
    lines.push(["y\\x", ...cs.map(c => num(xs[c]))].join(","));
    for (let r = 0; r < rows; r++) if (inY(ys[r])) lines.push([num(ys[r]), ...cs.map(c => num(z[r * cols + c]))].join(","));
  } else if (h.kind === "line" || h.kind === "bars") {
    const nx = a.x.length, n = h.lines || 1;
    const names = h.series && h.series.length === n ? h.series : Array.from({ length: n }, (_, i) => n > 1 ? `y${i}` : "y");
    lines.push([h.xlabel || "x", ...names].map(s => `"${String(s).replace(/"/g, '""')}"`).join(","));
    for (let i = 0; i < nx; i++) {
      if (!inX(a.x[i])) continue;
      const row = [num(a.x[i])];
      for (let l = 0; l < n; l++) row.push(num(a.y[l * nx + i]));
      lines.push(row.join(","));
    }
  } else if (h.kind === "trace" || h.kind === "points") {
    const start = panel.visibleStart ? panel.visibleStart() : 0;
    lines.push(h.kind === "trace" ? `"${h.xlabel || "x"}",value` : "x,y");
    for (let i = start; i < a.x.length; i++) if (inX(a.x[i])) lines.push(`${num(a.x[i])},${num(a.y[i])}`);
  } else if (h.kind === "value") {
    lines.push("value", num(h.value));
  } else if (h.text !== undefined) {
    lines.push(`"${String(h.text).replace(/"/g, '""')}"`);
  } else {
    return null;
  }
  return lines.join("\n") + "\n";
}

export function exportCSV(panel) {
  const text = panelCSV(panel);
  if (text === null) return false;
  download(new Blob([text], { type: "text/csv" }), fileName(panel, "csv"));
  return true;
}
