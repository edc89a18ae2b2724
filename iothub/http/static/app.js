// The live dashboard: signs in, subscribes over Socket.IO, and keeps a map, a device list, an alert feed
// and the selected device's chart and history up to date. Plain JavaScript, no build step.
//
// Rendering is incremental and paced: an event only marks its device dirty (an alert is queued), and at most
// every RENDER_INTERVAL_MS, in an animation frame, each dirty device's row and marker are updated in place,
// writing only the cells whose text changed, and the queued alerts go into the feed at once. Nothing redraws
// the whole list, so a frame costs the devices that changed since the last one, not all of them, and a
// device sending ten messages a second is redrawn a few times a second (window.iothubStats counts the work;
// the browser tests read it).
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("iothub-config").textContent);
  const $ = (id) => document.getElementById(id);
  const READINGS = ["engineRpm", "speed", "fuelLevel", "batteryVoltage", "crashDetection", "dtc"];
  const ALERT_FEED_LIMIT = 200;
  const SERIES_LIMIT = 300;
  const HISTORY_LIMIT = 50;
  const RENDER_INTERVAL_MS = 250;
  const OPS = { ">": (a, b) => a > b, ">=": (a, b) => a >= b, "<": (a, b) => a < b, "<=": (a, b) => a <= b,
                "==": (a, b) => a === b, "!=": (a, b) => a !== b };

  const stats = { messages: 0, frames: 0, rowRenders: 0, markerUpdates: 0, rowsCreated: 0, subscriptions: 0, alerts: 0, renderMs: 0 };
  window.iothubStats = stats;
  // For the console and the browser tests: where each device's marker is, and its colour.
  window.iothubMarkers = () => [...devices.values()].filter((known) => known.marker)
    .map((known) => ({ imei: known.imei, ...known.marker.getLatLng(), color: known.marker.options.color,
                       fillOpacity: known.marker.options.fillOpacity }));

  let session = null;  // {token, claims, emails}
  let socket = null;
  let map = null;
  let chart = null;
  let adminTimer = null;
  let fitted = false;
  const devices = new Map();  // imei → device
  const dirty = new Set();
  let pendingAlerts = [];
  let frameRequested = false;
  let lastRender = 0;
  let selected = null;

  // ------------------------------------------------------------------ values

  const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
  const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const time = (ms) => (isNumber(ms) ? clock.format(ms) : "—");
  // Write only what changed: an unchanged write still costs the browser a style and layout pass.
  const setText = (element, text) => { if (element.textContent !== text) element.textContent = text; };
  const show = (value) => {
    if (value === undefined) return "";
    if (isNumber(value)) return String(Math.round(value * 100) / 100);
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return text.length > 60 ? text.slice(0, 57) + "…" : text;
  };
  const positionOf = (data) => {
    const p = data && data.position;
    if (!p || !isNumber(p.latitude) || !isNumber(p.longitude)) return null;
    if (Math.abs(p.latitude) > 90 || Math.abs(p.longitude) > 180) return null;
    return [p.latitude, p.longitude];
  };
  // The readings of `data` that one of the server's rules fires on.
  const alerting = (data) => {
    const fields = new Set();
    for (const rule of config.rules) {
      const value = data[rule.field];
      if (isNumber(value) && OPS[rule.op] && OPS[rule.op](value, rule.threshold)) fields.add(rule.field);
    }
    return fields;
  };
  const claimsOf = (token) => {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    } catch (error) {
      return {};
    }
  };

  // ------------------------------------------------------------------ devices and rendering

  function device(imei) {
    let known = devices.get(imei);
    if (!known) {
      known = { imei, online: false, lastSeen: null, data: {}, alerting: new Set(), row: null, marker: null, series: { t: [] } };
      devices.set(imei, known);
    }
    return known;
  }

  function touch(known) {
    if (known) dirty.add(known);
    if (!frameRequested) {
      frameRequested = true;
      setTimeout(() => requestAnimationFrame(render), Math.max(0, lastRender + RENDER_INTERVAL_MS - performance.now()));
    }
  }

  function render() {
    const started = performance.now();
    lastRender = started;
    frameRequested = false;
    stats.frames += 1;
    for (const known of dirty) {
      renderRow(known);
      renderMarker(known);
      if (known === selected) renderDetail();
    }
    dirty.clear();
    renderAlerts();
    setText($("device-count"), `${devices.size} device${devices.size === 1 ? "" : "s"}`);
    if (!fitted) fit();
    stats.renderMs += performance.now() - started;
  }

  function renderRow(known) {
    if (!known.row) {
      const row = document.createElement("tr");
      row.dataset.imei = known.imei;
      for (let i = 0; i < 3 + READINGS.length + 1; i += 1) row.appendChild(document.createElement("td"));
      row.addEventListener("click", () => select(known));
      $("device-rows").appendChild(row);
      known.row = row;
      stats.rowsCreated += 1;
    }
    stats.rowRenders += 1;
    const cells = known.row.children;
    setText(cells[0], known.imei);
    if (!cells[1].firstChild) cells[1].appendChild(document.createElement("span"));
    const status = cells[1].firstChild;
    setText(status, known.online ? "online" : "offline");
    if (status.className !== (known.online ? "status online" : "status")) status.className = known.online ? "status online" : "status";
    setText(cells[2], time(known.lastSeen));
    READINGS.forEach((field, index) => {
      const cell = cells[3 + index];
      setText(cell, show(known.data[field]));
      if (cell.classList.contains("alerting") !== known.alerting.has(field)) cell.classList.toggle("alerting");
    });
    const position = positionOf(known.data);
    setText(cells[3 + READINGS.length], position ? position.map((v) => v.toFixed(3)).join(", ") : "—");
  }

  // Red while its last reading alerts (a crashed car that went silent stays red), else green or grey; offline ones pale.
  function style(known) {
    const color = known.alerting.size ? "#d62828" : known.online ? "#1f9d55" : "#8b96a3";
    return { color, fillOpacity: known.online ? 0.8 : 0.25 };
  }

  function renderMarker(known) {
    const position = positionOf(known.data);
    if (!position || !map) return;
    stats.markerUpdates += 1;
    if (!known.marker) {
      known.marker = L.circleMarker(position, { radius: 7, weight: 2, ...style(known) })
        .bindTooltip(known.imei)
        .on("click", () => select(known))
        .addTo(map);
    } else {
      known.marker.setLatLng(position);
      known.marker.setStyle(style(known));
    }
  }

  function fit() {
    const points = [];
    for (const known of devices.values()) {
      const position = positionOf(known.data);
      if (position) points.push(position);
    }
    if (!points.length || !map) return;
    fitted = true;
    map.fitBounds(points, { padding: [30, 30], maxZoom: 13 });
  }

  // ------------------------------------------------------------------ what the server sends

  function observe(known, timestamp, data) {
    if (!data || typeof data !== "object" || Array.isArray(data)) return;
    known.data = data;
    known.lastSeen = isNumber(timestamp) ? timestamp : Date.now();
    known.alerting = alerting(data);
    const series = known.series;
    series.t.push(known.lastSeen / 1000);
    for (const [field, value] of Object.entries(data)) {
      if (!isNumber(value)) continue;
      if (!series[field]) series[field] = new Array(series.t.length - 1).fill(null);
      series[field].push(value);
    }
    for (const field of Object.keys(series)) {
      if (field !== "t" && series[field].length < series.t.length) series[field].push(null);
      if (series[field].length > SERIES_LIMIT) series[field].shift();
    }
  }

  function onTelemetry(update) {
    if (!update || typeof update.imei !== "string") return;
    stats.messages += 1;
    const known = device(update.imei);
    observe(known, update.timestamp, update.data);
    known.online = true;
    touch(known);
  }

  function onStatus(status) {
    if (!status || typeof status.imei !== "string") return;
    const known = device(status.imei);
    known.online = status.status === "online";
    touch(known);
  }

  function onAlert(event, payload) {
    const alert = payload && payload.alert;
    if (!alert || typeof payload.imei !== "string") return;
    stats.alerts += 1;
    pendingAlerts.push({ event, imei: payload.imei, timestamp: payload.timestamp, alert });
    if (pendingAlerts.length > ALERT_FEED_LIMIT) pendingAlerts = pendingAlerts.slice(-ALERT_FEED_LIMIT);
    touch(null);
  }

  // The alerts queued since the last frame, newest on top, the feed kept to its last ALERT_FEED_LIMIT.
  function renderAlerts() {
    if (!pendingAlerts.length) return;
    const fragment = document.createDocumentFragment();
    for (const { event, imei, timestamp, alert } of pendingAlerts.reverse()) {
      const level = ["info", "warning", "critical"].includes(alert.level) ? alert.level : "info";
      const crash = alert.code === "CRASH_DETECTED" || event === "crash_detected";
      const item = document.createElement("li");
      item.className = level + (crash ? " crash" : "");
      item.dataset.code = String(alert.code);
      const stamp = document.createElement("time");
      stamp.textContent = time(timestamp);
      const text = document.createElement("span");
      text.textContent = `${imei} · ${alert.code} · ${alert.message}`;
      item.append(stamp, text);
      fragment.appendChild(item);
      if (crash && $("crash-banner").hidden) {
        $("crash-text").textContent = `${imei} at ${time(timestamp)}: ${alert.message}`;
        $("crash-banner").hidden = false;
      }
    }
    pendingAlerts = [];
    const feed = $("alert-feed");
    feed.prepend(fragment);
    while (feed.children.length > ALERT_FEED_LIMIT) feed.lastElementChild.remove();
    setText($("alert-count"), `${stats.alerts} alert${stats.alerts === 1 ? "" : "s"}`);
  }

  function onSubscribed(reply) {
    if (!reply || reply.success !== true) {
      setConnection("refused", (reply && reply.message) || "subscription refused");
      return;
    }
    stats.subscriptions += 1;
    for (const last of reply.telemetries || []) {
      if (!last || typeof last.imei !== "string") continue;
      const known = device(last.imei);
      observe(known, last.timestamp, last.data);
      known.online = last.connected === true;
      touch(known);
    }
  }

  // ------------------------------------------------------------------ the connection

  function setConnection(state, text) {
    const badgeElement = $("connection");
    badgeElement.dataset.state = state;
    badgeElement.textContent = text;
  }

  function connect() {
    socket = io({ auth: session.token ? { token: session.token } : {}, reconnectionDelayMax: 2000 });
    socket.on("connect", () => {
      setConnection("live", "live");
      for (const known of devices.values()) {  // a new connection: who is online comes with the subscriptions
        known.online = false;
        touch(known);
      }
      for (const email of session.emails) socket.emit("subscribe_user", { email }, onSubscribed);
    });
    socket.on("connect_error", (error) => {
      if (error && error.data && error.data.code) {  // the server refused the token: do not retry
        socket.disconnect();
        signOut(`Sign-in refused: ${error.message}`);
      } else {
        setConnection("reconnecting", "reconnecting…");
      }
    });
    socket.on("disconnect", (reason) => {
      setConnection("reconnecting", "reconnecting…");
      if (reason === "io server disconnect") socket.connect();
    });
    socket.on("telemetry_update", onTelemetry);
    socket.on("device_status", onStatus);
    socket.onAny((event, payload) => {
      if (payload && typeof payload === "object" && payload.alert) onAlert(event, payload);
    });
  }

  // ------------------------------------------------------------------ the selected device

  function select(known) {
    if (selected && selected.row) selected.row.classList.remove("selected");
    selected = known;
    if (known.row) known.row.classList.add("selected");
    $("detail-title").textContent = known.imei;
    renderDetail();
    loadHistory(known.imei);
  }

  function renderDetail() {
    if (!selected) return;
    const readings = $("detail-readings");
    const entries = Object.entries(selected.data);
    readings.replaceChildren(...entries.flatMap(([field, value]) => {
      const term = document.createElement("dt");
      term.textContent = field;
      const detail = document.createElement("dd");
      detail.textContent = show(value);
      detail.classList.toggle("alerting", selected.alerting.has(field));
      return [term, detail];
    }));
    const picker = $("chart-field");
    const fields = Object.keys(selected.series).filter((field) => field !== "t");
    if (picker.options.length !== fields.length || [...picker.options].some((o, i) => o.value !== fields[i])) {
      const current = picker.value;
      picker.replaceChildren(...fields.map((field) => new Option(field, field)));
      picker.value = fields.includes(current) ? current : (fields.includes("speed") ? "speed" : fields[0] || "");
    }
    drawChart();
  }

  function drawChart() {
    const field = $("chart-field").value;
    const target = $("chart");
    if (!selected || !field || !selected.series[field]) {
      if (chart) { chart.destroy(); chart = null; }
      return;
    }
    const data = [selected.series.t.slice(), selected.series[field].slice()];
    if (chart && chart.series[1].label === field) {
      chart.setData(data);
      return;
    }
    if (chart) chart.destroy();
    chart = new uPlot({
      width: Math.max(target.clientWidth, 240), height: 170, legend: { show: false },
      series: [{}, { label: field, stroke: "#2b6cb0", width: 2, spanGaps: true }],
      axes: [{}, { size: 50 }],
    }, data, target);
  }

  async function loadHistory(imei) {
    const rows = $("history-rows");
    rows.replaceChildren();
    if (!session.token) {
      $("history-note").textContent = "Sign in with a token to read the history.";
      return;
    }
    $("history-note").textContent = "loading…";
    try {
      const response = await fetch(`/api/telemetry/${encodeURIComponent(imei)}?limit=${HISTORY_LIMIT}`,
                                   { headers: { Authorization: `Bearer ${session.token}` } });
      const body = await response.json();
      if (selected === null || selected.imei !== imei) return;
      if (!response.ok || !body.success) {
        $("history-note").textContent = `History: ${body.message || response.status}`;
        return;
      }
      const items = body.data.items;
      $("history-note").textContent = `${items.length} stored message${items.length === 1 ? "" : "s"}, newest first`;
      rows.replaceChildren(...items.map((item) => {
        const row = document.createElement("tr");
        const when = document.createElement("td");
        when.textContent = new Date(item.timestamp).toLocaleString();
        const what = document.createElement("td");
        what.textContent = show(item.data);
        row.append(when, what);
        return row;
      }));
    } catch (error) {
      $("history-note").textContent = "History could not be loaded.";
    }
  }

  // ------------------------------------------------------------------ the operator

  async function api(path, options = {}) {
    const response = await fetch(path, { ...options,
      headers: { ...(options.headers || {}), Authorization: `Bearer ${session.token}`, "Content-Type": "application/json" } });
    return response.json();
  }

  async function refreshCounts() {
    try {
      const body = await api("/api/realtime/connections");
      if (!body.success) return;
      const data = body.data;
      $("admin-counts").textContent =
        `${data.totalConnections} connections · ${data.devices.length} devices online · ${data.users.length} users subscribed`;
    } catch (error) {
      $("admin-counts").textContent = "counts unavailable";
    }
  }

  async function broadcast(event) {
    event.preventDefault();
    const body = await api("/api/realtime/broadcast", { method: "POST",
      body: JSON.stringify({ event: $("broadcast-event").value, data: { message: $("broadcast-message").value } }) });
    $("broadcast-result").textContent = body.success ? `sent to ${body.data.recipients} sockets` : `refused: ${body.message}`;
  }

  // ------------------------------------------------------------------ signing in and out

  function signIn(token, emailText) {
    const claims = token ? claimsOf(token) : {};
    let emails = emailText.split(",").map((e) => e.trim().toLowerCase()).filter(Boolean);
    if (!emails.length && typeof claims.email === "string") emails = [claims.email];
    if (config.production && !token) return showSignIn("Production needs a token.");
    if (!emails.length && !token) return showSignIn("Type the e-mail to watch.");  // a token: the server judges it first
    session = { token, claims, emails };
    $("sign-in").hidden = true;
    $("board").hidden = false;
    $("sign-out").hidden = false;
    $("who").textContent = `${emails.join(", ")}${claims.role ? ` (${claims.role})` : ""}`;
    setConnection("reconnecting", "connecting…");
    if (!map) {
      map = L.map("map", { preferCanvas: true, attributionControl: Boolean(config.attribution) }).setView([20, 0], 2);
      if (config.tiles) L.tileLayer(config.tiles, { attribution: config.attribution || "", maxZoom: 19 }).addTo(map);
    }
    map.invalidateSize();
    if (claims.role === "admin") {
      $("admin").hidden = false;
      refreshCounts();
      adminTimer = setInterval(refreshCounts, 5000);
    }
    connect();
  }

  function signOut(message) {
    if (socket) { socket.off(); socket.disconnect(); socket = null; }
    if (adminTimer) { clearInterval(adminTimer); adminTimer = null; }
    for (const known of devices.values()) {
      if (known.marker) known.marker.remove();
      if (known.row) known.row.remove();
    }
    devices.clear();
    dirty.clear();
    pendingAlerts = [];
    selected = null;
    fitted = false;
    session = null;
    $("alert-feed").replaceChildren();
    $("admin").hidden = true;
    $("board").hidden = true;
    $("sign-out").hidden = true;
    $("who").textContent = "";
    setConnection(message ? "refused" : "signed-out", message ? "refused" : "signed out");
    showSignIn(message || "");
  }

  function showSignIn(error) {
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = error;
    $("sign-in-hint").textContent = config.production
      ? "Production: paste a token (`iothub token --email you@example.com --role user`). An admin token may name the e-mails to watch."
      : "Development: type the e-mail(s) whose devices to watch. A token is optional (it unlocks the history and, for admins, the operator panel).";
  }

  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim(), $("email").value);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("crash-dismiss").addEventListener("click", () => { $("crash-banner").hidden = true; });
  $("fit").addEventListener("click", fit);
  $("chart-field").addEventListener("change", () => { if (chart) { chart.destroy(); chart = null; } drawChart(); });
  $("broadcast-form").addEventListener("submit", broadcast);

  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  if (params.has("token")) history.replaceState(null, "", location.pathname);  // the token leaves the address bar
  showSignIn("");
  if (token || params.get("email")) signIn(token, params.get("email") || "");
})();
