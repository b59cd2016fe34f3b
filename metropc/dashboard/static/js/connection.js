// The websocket to the dashboard server.  Text messages are JSON (hello,
// index, control, reply); binary ones are frames of view data (see
// display.pack_frame), decoded into typed arrays without copying.  We
// acknowledge what arrived once it is drawn, in an animation frame: that is
// what paces the server, so a slow or hidden page simply gets fewer, newer
// frames.

import { S } from "./state.js";

let handlers = null;

export function send(obj) {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(obj));
}

// Send a request and resolve with the server's reply ({ok, message}).
export function request(obj) {
  const id = S.nextId++;
  obj.id = id;
  return new Promise(resolve => { S.replies.set(id, resolve); send(obj); });
}

// Tell the server which views the panels show, and how much history.
export function sendWatch() {
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

// Draw what changed and acknowledge what arrived, once per animation frame:
// a hidden or busy page acknowledges nothing, so the server stops sending.
export function schedule() {
  if (S.rafPending) return;
  S.rafPending = true;
  requestAnimationFrame(() => {
    S.rafPending = false;
    for (const p of S.panels) p.draw();
    if (S.unacked > 0) { send({ op: "ack", n: S.unacked }); S.unacked = 0; }
  });
}

export function decodeFrame(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const start = Math.ceil((4 + n) / 8) * 8;
  const a = {};
  for (const [name, [off, count, dtype]] of Object.entries(h.arrays || {})) {
    a[name] = dtype === "f4" ? new Float32Array(buf, start + off, count) : new Float64Array(buf, start + off, count);
  }
  return [h, a];
}

export function setConn(state, text) {
  const c = document.getElementById("conn");
  c.className = "conn " + (state === "up" ? "conn-up" : state === "stale" ? "conn-stale" : "conn-down");
  c.textContent = text; c.dataset.state = state;
}

// Connect (and reconnect, with back-off); `h` has onText(msg) and onFrame(h, a).
export function connect(h) {
  handlers = h || handlers;
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
    setTimeout(() => connect(), 500 * S.retry);
  };
  ws.onmessage = ev => {
    S.unacked++;
    if (typeof ev.data === "string") handlers.onText(JSON.parse(ev.data));
    else { const [fh, fa] = decodeFrame(ev.data); handlers.onFrame(fh, fa); }
    schedule();
  };
}
