// A smoke run of the dashboard script in Node with a stub DOM (no browser): paste a key,
// load devices (registered and seen) and the backlog, receive live messages, draw, forget.
// A suite of hack/test.sh (the real browser runs it on the cluster, tests/dashboard/):
//   node api-image/tests/dashboard-smoke.js api-image/src/dashboard/dashboard.js
"use strict";
const assert = require("assert");
const fs = require("fs");
const src = fs.readFileSync(process.argv[2], "utf8");
const listeners = {};
function el(id) {
  const e = {
    id, value: "", hidden: false, className: "", textContent: "", title: "", colSpan: 0,
    clientWidth: 800, clientHeight: 280, width: 0, height: 0, children: [],
    classList: { toggle() {} },
    listeners: {},
    addEventListener(t, f) { this.listeners[t] = f; },
    replaceChildren(...c) { this.children = c; },
    append(...c) { this.children.push(...c); },
    insertRow() { const r = el("tr"); this.children.push(r); r.insertCell = () => { const c = el("td"); r.children.push(c); return c; }; return r; },
    getContext() {
      return new Proxy({}, { get: (t, k) => k === "measureText" ? (s) => ({ width: s.length * 6 }) : (k in t ? t[k] : () => { ops.push(k); }), set: (t, k, v) => { t[k] = v; return true; } });
    },
  };
  return e;
}
const ops = [];
const els = {};
global.document = {
  getElementById: (id) => (els[id] ||= el(id)),
  createElement: (t) => el(t),
  documentElement: {},
  addEventListener: (t, f) => (listeners[t] = f),
};
global.window = { devicePixelRatio: 2, addEventListener() {}, matchMedia: () => ({ addEventListener() {} }) };
global.getComputedStyle = () => ({ getPropertyValue: (n) => "#123456 " });
global.Option = function (t, v) { return { textContent: t, value: v }; };
const store = {};
global.sessionStorage = { getItem: (k) => store[k] ?? null, setItem: (k, v) => (store[k] = v), removeItem: (k) => delete store[k] };
const timers = [];
global.setInterval = (f) => timers.push(f);
global.clearInterval = () => {};
global.setTimeout = () => 0; global.clearTimeout = () => {};
global.requestAnimationFrame = (f) => (global.frameFn = f);
let fetched = [];
const answers = {
  "/v1/devices": { devices: [
    { device: "a-1", lastSeen: new Date(Date.now() - 1000).toISOString(), messages: 3, registered: false },
    { device: "b-1", lastSeen: "2020-01-01T00:00:00Z", messages: 7, registered: false },
    { device: "c-1", lastSeen: null, messages: 0, registered: true, connected: true, disabled: false },
    { device: "d-1", lastSeen: null, messages: 0, registered: true, connected: null, disabled: false },
    { device: "e-1", lastSeen: null, messages: 0, registered: true, connected: false, disabled: true },
  ], rosterOmitted: 0 },
  "/v1/backlog": { messages: 1234, consumers: 2, observedAt: new Date().toISOString() },
};
global.fetch = async (url, opts) => { fetched.push([url, opts.headers.Authorization]); return { status: 200, ok: true, json: async () => answers[url] }; };
let es;
global.EventSource = function (url) { this.url = url; this.readyState = 1; this.l = {}; this.addEventListener = (t, f) => (this.l[t] = f); this.close = () => {}; es = this; };
global.EventSource.CLOSED = 2;
eval(src);
listeners.DOMContentLoaded();
document.getElementById("key").value = "  k+ey/1 ";
els["key-form"].listeners.submit({ preventDefault() {} });
(async () => {
  await new Promise((r) => setImmediate(r));
  assert.deepStrictEqual(store, { "tributary.apiKey": "k+ey/1" });
  assert.deepStrictEqual(fetched, [["/v1/devices", "Bearer k+ey/1"], ["/v1/backlog", "Bearer k+ey/1"]]);
  assert.strictEqual(els.backlog.textContent, (1234).toLocaleString());
  assert.strictEqual(els["backlog-note"].textContent, "waiting for 2 consumers");
  assert.strictEqual(es.url, "/v1/stream?access_token=k%2Bey%2F1");
  es.l.ready({});
  for (let i = 0; i < 20; i++) {
    es.l.message({ data: JSON.stringify({ id: "x" + i, device: i % 2 ? "a-1" : "a-2", topic: "t", seq: i, payload: { temperature: 20 + Math.sin(i), text: "n" } }) });
  }
  es.l.message({ data: "not json" });
  timers.forEach((f) => f());
  frameFn();
  assert.strictEqual(els.rate.textContent, "20.0");
  // a-1 and a-2 seen now, c-1 connected to a gateway.
  assert.strictEqual(els.online.textContent, "3");
  assert.strictEqual(els["online-note"].textContent, "of 6 devices");
  assert.deepStrictEqual(els.field.children.map((o) => o.value + (o.selected ? "*" : "")), ["payload.temperature*", "seq"]);
  const rows = els.devices.children.map((r) => r.children.map((c) => c.textContent + (c.children.length ? "[" + c.children.map(x=>typeof x==="string"?x:x.className).join(",") + "]" : "")).join(" | "));
  assert.deepStrictEqual(rows.map((r) => r.split(" | ")[0] + " " + r.split(" | ")[1]), ["a-1 [dot online,online]", "a-2 [dot online,online]", "b-1 [dot,offline]", "c-1 [dot online,online]", "d-1 [dot,never seen]", "e-1 [dot,disabled]"]);
  assert.deepStrictEqual(els.legend.children.length, 2);
  assert.ok(ops.includes("lineTo") && ops.includes("arc"), "the chart drew lines");
  assert.strictEqual(els["stream-state"].textContent, "live");
  els.forget.listeners.click();
  frameFn();
  assert.deepStrictEqual(store, {});
  assert.strictEqual(els.online.textContent, "–");
  assert.strictEqual(els.devices.children[0].children[0].textContent, "No key yet.");
  console.log("dashboard smoke: ok");
})();
