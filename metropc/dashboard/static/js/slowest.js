// "Slowest views": which views take longest, measured where each runs
// (p50 / p99 over the last 10 s), from the server's /status
// (metropc.metrics, docs/operations.md "Metrics and status").  A section of
// its own in the sidebar, kept apart from the other modules on purpose: it
// needs nothing from them, and reads the same document Prometheus users get.

const PERIOD_MS = 2000;
const SHOWN = 5;

function seconds(s) {
  if (s >= 1) return `${s.toFixed(2)} s`;
  if (s >= 1e-3) return `${(s * 1e3).toFixed(1)} ms`;
  return `${Math.round(s * 1e6)} µs`;
}

function section() {
  const box = document.createElement("section");
  box.id = "slowest-section";
  const title = document.createElement("h2");
  title.textContent = "Slowest views";
  title.title = "p50 / p99 per call, measured where each view runs (last 10 s)";
  const table = document.createElement("table");
  table.id = "slowest";
  table.className = "inputs";
  box.append(title, table);
  const sidebar = document.getElementById("sidebar");
  const before = document.getElementById("inputs-section");
  if (sidebar) sidebar.insertBefore(box, before && before.parentNode === sidebar ? before : null);
  else document.body.append(box);
  return table;
}

function render(table, rows) {
  const lines = rows.slice(0, SHOWN).map(r => {
    const tr = document.createElement("tr");
    tr.dataset.view = r.view;
    for (const text of [r.view, seconds(r.p50), seconds(r.p99)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  if (!lines.length) {
    const tr = document.createElement("tr");
    tr.textContent = "no view has run yet";
    tr.className = "muted";
    lines.push(tr);
  }
  table.replaceChildren(...lines);
}

async function refresh(table) {
  try {
    const r = await fetch("/status", {cache: "no-store", credentials: "same-origin"});
    if (r.ok) render(table, (await r.json()).slowest_views || []);
  } catch (e) {
    // The server is gone or restarting: keep what is shown, try again later.
  }
}

const table = section();
refresh(table);
setInterval(() => refresh(table), PERIOD_MS);
