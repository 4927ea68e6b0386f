// Tributary dashboard. Plain JavaScript, no dependencies: it reads /v1/devices with the
// pasted key (Authorization header) and the live stream /v1/stream (EventSource cannot set
// headers, so the key goes in its access_token parameter, never in the address bar).
"use strict";

(() => {
  const KEY_STORAGE = "tributary.apiKey";
  const ONLINE_MS = 5 * 60 * 1000; // a device seen this recently counts as online
  const WINDOW_MS = 5 * 60 * 1000; // the chart's time span
  const RATE_WINDOW_MS = 10 * 1000; // throughput is averaged over this
  const DEVICES_EVERY_MS = 10 * 1000;
  const MAX_SERIES = 8; // lines on the chart (colours --series-1..8)
  const MAX_SAMPLES = 2000; // kept per device
  const MAX_FIELDS = 200;
  const DEVICES_URL = "/v1/devices";
  const BACKLOG_URL = "/v1/backlog";
  const STREAM_URL = "/v1/stream";

  const $ = (id) => document.getElementById(id);

  let key = sessionStorage.getItem(KEY_STORAGE) || "";
  let source = null;
  let streamOpenedAt = 0;
  let retryDelay = 2000;
  let retryTimer = 0;
  let devicesTimer = 0;
  let devicesLoadedAt = 0;
  // device -> {lastSeen: ms or NaN, messages: number or null, registered, connected, disabled}
  const devices = new Map();
  const samples = new Map(); // device -> [{t, values: {field: number}}]
  const arrivals = []; // arrival times of live messages, for throughput
  const fields = new Set();
  let chosenField = "";

  // ---- pure helpers ------------------------------------------------------------------

  /** Every finite number in a message as dotted paths (`payload.temperature`). */
  function numericFields(value, prefix, out, depth) {
    if (typeof value === "number" && Number.isFinite(value)) {
      if (prefix) out[prefix] = value;
    } else if (value && typeof value === "object" && !Array.isArray(value) && depth < 5) {
      for (const [name, inner] of Object.entries(value)) {
        numericFields(inner, prefix ? prefix + "." + name : name, out, depth + 1);
      }
    }
    return out;
  }

  /** About `count` round tick values, the first at or below `min`, the last at or above `max`. */
  function niceTicks(min, max, count) {
    const span = max - min || Math.abs(max) || 1;
    const raw = span / Math.max(1, count);
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) || raw;
    const first = Math.floor(min / step);
    const last = Math.max(first + 1, Math.ceil(max / step));
    const ticks = [];
    for (let i = first; i <= last; i++) {
      // Multiplying (not adding) keeps 0.1-steps free of accumulated rounding.
      ticks.push(Number((i * step).toPrecision(12)));
    }
    return { step, ticks };
  }

  function formatNumber(value) {
    const abs = Math.abs(value);
    if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return value.toExponential(2);
    return Number(value.toFixed(abs >= 100 ? 1 : 3)).toLocaleString();
  }

  function ago(ms) {
    if (!Number.isFinite(ms)) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // ---- state shown in the page -------------------------------------------------------

  function notice(text, isError) {
    const element = $("notice");
    element.textContent = text;
    element.classList.toggle("error", Boolean(isError));
  }

  function streamState(state, note) {
    const element = $("stream-state");
    element.textContent = state;
    element.className = "stat-value stream-state " + state;
    $("stream-note").textContent = note;
  }

  function authHeaders() {
    return { Authorization: "Bearer " + key };
  }

  async function loadDevices() {
    if (!key) return;
    let response;
    try {
      response = await fetch(DEVICES_URL, { headers: authHeaders(), cache: "no-store" });
    } catch (error) {
      notice("The API did not answer (" + error.message + "); retrying.", true);
      return;
    }
    if (response.status === 401) {
      forget();
      notice("This API key was refused and is forgotten. Paste another one.", true);
      return;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      notice("Devices: " + response.status + " " + (body.error || response.statusText), true);
      return;
    }
    const body = await response.json();
    const seen = new Set();
    for (const entry of body.devices || []) {
      if (typeof entry.device !== "string") continue;
      seen.add(entry.device);
      const stored = Date.parse(entry.lastSeen);
      const known = devices.get(entry.device);
      devices.set(entry.device, {
        lastSeen: known && known.lastSeen > stored ? known.lastSeen : stored,
        messages: typeof entry.messages === "number" ? entry.messages : null,
        registered: entry.registered === true,
        connected: typeof entry.connected === "boolean" ? entry.connected : null,
        disabled: entry.disabled === true,
      });
    }
    devicesLoadedAt = Date.now();
    notice("Connected. Devices refresh every " + DEVICES_EVERY_MS / 1000 + " s.", false);
    renderDevices();
  }

  /** The pipeline's backlog: messages waiting in its queue for a worker. */
  async function loadBacklog() {
    if (!key) return;
    let body = {};
    let ok = false;
    try {
      const response = await fetch(BACKLOG_URL, { headers: authHeaders(), cache: "no-store" });
      ok = response.ok;
      body = await response.json().catch(() => ({}));
    } catch (error) {
      body = { error: error.message };
    }
    if (ok && typeof body.messages === "number") {
      $("backlog").textContent = body.messages.toLocaleString();
      $("backlog-note").textContent =
        "waiting for " + body.consumers + (body.consumers === 1 ? " consumer" : " consumers");
    } else {
      $("backlog").textContent = "–";
      $("backlog-note").textContent = body.error ? "unknown: " + body.error : "unknown";
    }
  }

  /** Online: connected to a gateway (registered devices), or seen recently. */
  function isOnline(device, now) {
    if (device.disabled) return false;
    return device.connected === true || now - device.lastSeen <= ONLINE_MS;
  }

  function statusText(device, online) {
    if (device.disabled) return "disabled";
    if (online) return "online";
    return Number.isFinite(device.lastSeen) || device.messages ? "offline" : "never seen";
  }

  function renderDevices() {
    const now = Date.now();
    const rows = [...devices.entries()].sort((a, b) => {
      const byTime = (b[1].lastSeen || 0) - (a[1].lastSeen || 0);
      return byTime || a[0].localeCompare(b[0]);
    });
    const online = rows.filter(([, d]) => isOnline(d, now)).length;
    $("online").textContent = key ? String(online) : "–";
    $("online-note").textContent = key ? "of " + rows.length + " devices" : "of –";
    $("devices-updated").textContent = devicesLoadedAt ? "updated " + ago(devicesLoadedAt) : "";

    const body = $("devices");
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = 4;
      td.className = "empty";
      td.textContent = key ? "No devices for this key yet." : "No key yet.";
      return;
    }
    for (const [name, device] of rows.slice(0, 1000)) {
      const online = isOnline(device, now);
      const tr = body.insertRow();
      tr.insertCell().textContent = name;
      const status = tr.insertCell();
      const dot = document.createElement("span");
      dot.className = online ? "dot online" : "dot";
      status.append(dot, statusText(device, online));
      if (device.registered) status.title = "a registered Device";
      const seen = tr.insertCell();
      seen.textContent = ago(device.lastSeen);
      if (Number.isFinite(device.lastSeen)) seen.title = new Date(device.lastSeen).toISOString();
      const count = tr.insertCell();
      count.className = "num";
      count.textContent = device.messages === null ? "–" : device.messages.toLocaleString();
    }
  }

  // ---- live stream -------------------------------------------------------------------

  function openStream() {
    if (!key || source) return;
    streamState("waiting", "connecting…");
    source = new EventSource(STREAM_URL + "?access_token=" + encodeURIComponent(key));
    source.addEventListener("ready", () => {
      streamOpenedAt = Date.now();
      retryDelay = 2000;
      streamState("live", "subscribed");
    });
    source.addEventListener("message", onMessage);
    source.addEventListener("error", () => {
      if (!source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (bad key, live messages not configured, too many clients): try again later.
        source = null;
        streamState("failed", "closed; retrying in " + Math.round(retryDelay / 1000) + " s");
        retryTimer = setTimeout(openStream, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 60000);
      } else {
        streamState("waiting", "reconnecting…");
      }
    });
  }

  function onMessage(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!message || typeof message.device !== "string") return;
    const now = Date.now();
    arrivals.push(now);
    const known = devices.get(message.device) || { messages: null };
    devices.set(message.device, { ...known, lastSeen: now });

    const values = numericFields(message, "", {}, 0);
    let added = false;
    for (const field of Object.keys(values)) {
      if (!fields.has(field) && fields.size < MAX_FIELDS) {
        fields.add(field);
        added = true;
      }
    }
    if (added) renderFields();
    let list = samples.get(message.device);
    if (!list) samples.set(message.device, (list = []));
    list.push({ t: now, values });
    if (list.length > MAX_SAMPLES) list.splice(0, list.length - MAX_SAMPLES);
    chartDirty = true;
  }

  function renderFields() {
    const select = $("field");
    const sorted = [...fields].sort();
    if (!chosenField) {
      // Prefer a payload value over envelope numbers such as sequence counters.
      chosenField = sorted.find((f) => f.startsWith("payload.")) || sorted[0] || "";
    }
    select.replaceChildren(
      ...sorted.map((field) => {
        const option = document.createElement("option");
        option.value = field;
        option.textContent = field;
        option.selected = field === chosenField;
        return option;
      }),
    );
  }

  function throughput(now) {
    while (arrivals.length && now - arrivals[0] > RATE_WINDOW_MS) arrivals.shift();
    const span = Math.min(RATE_WINDOW_MS, Math.max(1000, now - streamOpenedAt));
    return (arrivals.length * 1000) / span;
  }

  // ---- chart -------------------------------------------------------------------------

  let chartDirty = true;

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function drawChart() {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);

    const now = Date.now();
    const start = now - WINDOW_MS;
    // The devices with the chosen field, most recently active first.
    const lines = [];
    for (const [device, list] of samples) {
      while (list.length && list[0].t < start) list.shift();
      if (!list.length) {
        samples.delete(device); // quiet devices do not keep memory
        continue;
      }
      const points = list.filter((s) => chosenField in s.values);
      if (points.length) lines.push({ device, points, last: points[points.length - 1].t });
    }
    lines.sort((a, b) => b.last - a.last || a.device.localeCompare(b.device));
    lines.length = Math.min(lines.length, MAX_SERIES);
    lines.sort((a, b) => a.device.localeCompare(b.device));

    const font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    g.font = font;
    const muted = css("--muted");
    if (!lines.length) {
      g.fillStyle = muted;
      g.textAlign = "center";
      g.textBaseline = "middle";
      const text = !key
        ? "Paste an API key to see live values."
        : chosenField
          ? "No values of " + chosenField + " in the last 5 minutes."
          : "Waiting for live messages with numbers…";
      g.fillText(text, width / 2, height / 2);
      renderLegend([]);
      return;
    }

    let min = Infinity;
    let max = -Infinity;
    for (const line of lines) {
      for (const p of line.points) {
        min = Math.min(min, p.values[chosenField]);
        max = Math.max(max, p.values[chosenField]);
      }
    }
    if (min === max) {
      min -= 1;
      max += 1;
    }
    const { ticks } = niceTicks(min, max, Math.max(2, Math.floor(height / 50)));
    const low = ticks[0];
    const high = ticks[ticks.length - 1];
    const labels = ticks.map(formatNumber);
    const left = 12 + Math.max(...labels.map((l) => g.measureText(l).width));
    const right = width - 12;
    const top = 10;
    const bottom = height - 26;
    const x = (t) => left + ((t - start) / WINDOW_MS) * (right - left);
    const y = (v) => bottom - ((v - low) / (high - low)) * (bottom - top);

    // Grid and axes labels.
    g.strokeStyle = css("--grid");
    g.lineWidth = 1;
    g.fillStyle = muted;
    g.textAlign = "right";
    g.textBaseline = "middle";
    ticks.forEach((tick, i) => {
      const py = Math.round(y(tick)) + 0.5;
      g.beginPath();
      g.moveTo(left, py);
      g.lineTo(right, py);
      g.stroke();
      g.fillText(labels[i], left - 8, py);
    });
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let t = Math.ceil(start / 60000) * 60000; t <= now; t += 60000) {
      const px = Math.round(x(t)) + 0.5;
      g.beginPath();
      g.moveTo(px, top);
      g.lineTo(px, bottom);
      g.stroke();
      g.fillText(clock(t), px, bottom + 8);
    }

    // One line per device, a dot on its newest value.
    g.lineWidth = 2;
    g.lineJoin = "round";
    lines.forEach((line, i) => {
      const colour = css("--series-" + (i + 1));
      g.strokeStyle = colour;
      g.fillStyle = colour;
      g.beginPath();
      line.points.forEach((p, j) => {
        const px = x(p.t);
        const py = y(p.values[chosenField]);
        if (j === 0) g.moveTo(px, py);
        else g.lineTo(px, py);
      });
      g.stroke();
      const last = line.points[line.points.length - 1];
      g.beginPath();
      g.arc(x(last.t), y(last.values[chosenField]), 3.5, 0, 2 * Math.PI);
      g.fill();
    });
    renderLegend(lines);
  }

  function renderLegend(lines) {
    $("legend").replaceChildren(
      ...lines.map((line, i) => {
        const item = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "swatch s" + (i + 1);
        const last = line.points[line.points.length - 1].values[chosenField];
        item.append(swatch, line.device + " · " + formatNumber(last));
        return item;
      }),
    );
  }

  // ---- wiring ------------------------------------------------------------------------

  function connect() {
    $("forget").hidden = !key;
    if (!key) return;
    notice("Connecting…", false);
    loadDevices();
    loadBacklog();
    clearInterval(devicesTimer);
    devicesTimer = setInterval(() => {
      loadDevices();
      loadBacklog();
    }, DEVICES_EVERY_MS);
    openStream();
  }

  function disconnect() {
    clearInterval(devicesTimer);
    clearTimeout(retryTimer);
    if (source) source.close();
    source = null;
    streamOpenedAt = 0;
    retryDelay = 2000;
    streamState("off", "not connected");
  }

  function forget() {
    disconnect();
    key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    devices.clear();
    samples.clear();
    arrivals.length = 0;
    fields.clear();
    chosenField = "";
    $("field").replaceChildren(new Option("waiting for messages…", ""));
    $("forget").hidden = true;
    $("rate").textContent = "–";
    devicesLoadedAt = 0;
    notice("Key forgotten. Paste an API key to connect.", false);
    renderDevices();
    chartDirty = true;
  }

  function tick() {
    const now = Date.now();
    $("rate").textContent = source && streamOpenedAt ? throughput(now).toFixed(1) : "–";
    renderDevices();
    chartDirty = true;
  }

  function frame() {
    if (chartDirty) {
      chartDirty = false;
      drawChart();
    }
    requestAnimationFrame(frame);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault(); // never let the key reach a URL
      const input = $("key");
      const pasted = input.value.trim();
      input.value = "";
      if (!pasted) return;
      disconnect();
      key = pasted;
      sessionStorage.setItem(KEY_STORAGE, key);
      connect();
    });
    $("forget").addEventListener("click", forget);
    $("field").addEventListener("change", (event) => {
      chosenField = event.target.value;
      chartDirty = true;
    });
    window.addEventListener("resize", () => (chartDirty = true));
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => (chartDirty = true));
    setInterval(tick, 1000);
    requestAnimationFrame(frame);
    connect();
    renderDevices();
  });
})();
