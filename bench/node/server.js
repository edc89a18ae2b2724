// The Node.js peer of `iothub bench --server node`: the official Socket.IO server doing the fleet's job,
// so that iothub's figures are ratios to Node's measured in the same run.
//
// It speaks what the fleet benchmark uses of PROTOCOL.md, the way a Node developer writes it: register_device,
// telemetry_data (its telemetry_update and alert events to the owner's room), heartbeat, subscribe_user,
// unsubscribe_user, device_status on registration and disconnect; each answered through the acknowledgement,
// or as the reply event without one. It stores nothing. The alert rules, the ping timers and the event-loop lag
// monitor come from iothub itself (IOTHUB_BENCH_PEER, JSON, written by bench/nodepeer.py), and the lag is
// exposed under iothub's metric names at GET /metrics, so the benchmark reads both servers alike.
"use strict";

const http = require("node:http");
const { parseArgs } = require("node:util");
const { Server } = require("socket.io");

const { values: options } = parseArgs({ options: { host: { type: "string", default: "127.0.0.1" }, port: { type: "string" } } });
const peer = JSON.parse(process.env.IOTHUB_BENCH_PEER);
const COMPARE = { ">": (a, b) => a > b, ">=": (a, b) => a >= b, "<": (a, b) => a < b, "<=": (a, b) => a <= b, "==": (a, b) => a === b, "!=": (a, b) => a !== b };
const rules = peer.rules.map((rule) => ({ ...rule, fires: COMPARE[rule.op] }));
const IMEI = /^\d{15}$/;
const EMAIL = /^[^@\s]+@[^@\s]+\.[^@\s]+$/;

/** imei → owner's e-mail (kept across connections, like iothub's registry). */
const owners = new Map();
/** e-mail → the imeis it owns. */
const owned = new Map();
/** imei → {socket, lastHeartbeat}: the devices live now. */
const live = new Map();
/** imei → {imei, timestamp, data}: the last telemetry of each. */
const lastTelemetry = new Map();

function failure(code, message) {
  return { success: false, code, message };
}

/** Answer through the acknowledgement when there is one, else as the reply event (an `error` for a failure). */
function reply(socket, ack, event, payload) {
  if (typeof ack === "function") ack(payload);
  else socket.emit(payload.success ? event : "error", payload);
}

function announce(imei, status) {
  const owner = owners.get(imei);
  if (owner) io.to(owner).emit("device_status", { type: "device_status", imei, status, timestamp: Date.now() });
}

const server = http.createServer((request, response) => {
  if (request.url === "/health") {
    response.writeHead(200, { "Content-Type": "application/json" });
    response.end(JSON.stringify({ status: "OK", connectedDevices: live.size }));
  } else if (request.url === "/metrics") {
    response.writeHead(200, { "Content-Type": "text/plain; version=0.0.4" });
    response.end(lag.text());
  } else {
    response.writeHead(404).end();
  }
});
const io = new Server(server, { pingInterval: peer.pingIntervalMs, pingTimeout: peer.pingTimeoutMs, serveClient: false });

io.on("connection", (socket) => {
  /** The imeis this socket registered. */
  const devices = new Set();

  socket.on("register_device", (payload, ack) => {
    const imei = payload?.imei;
    if (typeof imei !== "string" || !IMEI.test(imei)) return reply(socket, ack, "device_registered", failure("INVALID_IMEI", "imei must be a string of 15 digits"));
    const email = payload.userEmail;
    if (email !== undefined && (typeof email !== "string" || !EMAIL.test(email))) {
      return reply(socket, ack, "device_registered", failure("INVALID_EMAIL", "userEmail is not a valid e-mail address"));
    }
    if (email) {
      const owner = email.toLowerCase();
      owned.get(owners.get(imei))?.delete(imei);
      owners.set(imei, owner);
      if (!owned.has(owner)) owned.set(owner, new Set());
      owned.get(owner).add(imei);
    }
    live.set(imei, { socket, lastHeartbeat: Date.now() });
    devices.add(imei);
    reply(socket, ack, "device_registered", { success: true, imei, message: "Device registered successfully" });
    announce(imei, "online");
  });

  socket.on("telemetry_data", (payload, ack) => {
    const imei = payload?.imei;
    const data = payload?.data;
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      return reply(socket, ack, "telemetry_processed", failure("INVALID_PAYLOAD", "data must be an object"));
    }
    const device = live.get(imei);
    if (device === undefined || device.socket !== socket) {
      return reply(socket, ack, "telemetry_processed", failure("DEVICE_NOT_REGISTERED", `register_device ${imei} on this socket first`));
    }
    const timestamp = typeof payload.timestamp === "number" ? payload.timestamp : Date.now();
    device.lastHeartbeat = Date.now();
    lastTelemetry.set(imei, { imei, timestamp, data });
    const owner = owners.get(imei);
    if (owner) {
      const room = io.to(owner);
      room.emit("telemetry_update", { type: "telemetry_update", imei, timestamp, data });
      for (const rule of rules) {
        const value = data[rule.field];
        if (typeof value === "number" && rule.fires(value, rule.threshold)) {
          room.emit(rule.event, { type: rule.event, imei, timestamp, data, alert: { level: rule.level, message: rule.message, code: rule.code } });
        }
      }
    }
    reply(socket, ack, "telemetry_processed", { success: true, message: "Telemetry processed successfully" });
  });

  socket.on("heartbeat", (payload, ack) => {
    const device = live.get(payload?.imei);
    if (device === undefined || device.socket !== socket) return reply(socket, ack, "heartbeat", failure("DEVICE_NOT_REGISTERED", "register first"));
    device.lastHeartbeat = Date.now();
    reply(socket, ack, "heartbeat", { success: true, imei: payload.imei, timestamp: device.lastHeartbeat });
  });

  socket.on("subscribe_user", (payload, ack) => {
    const email = payload?.email;
    if (typeof email !== "string" || !EMAIL.test(email)) return reply(socket, ack, "user_subscribed", failure("INVALID_EMAIL", "email is not a valid e-mail address"));
    const owner = email.toLowerCase();
    socket.join(owner);
    const imeis = [...(owned.get(owner) ?? [])];
    const telemetries = imeis.filter((imei) => lastTelemetry.has(imei)).map((imei) => ({ ...lastTelemetry.get(imei), connected: live.has(imei) }));
    reply(socket, ack, "user_subscribed", { success: true, email: owner, deviceCount: imeis.length, telemetries });
  });

  socket.on("unsubscribe_user", (payload, ack) => {
    const owner = String(payload?.email ?? "").toLowerCase();
    socket.leave(owner);
    reply(socket, ack, "user_unsubscribed", { success: true, email: owner });
  });

  socket.on("disconnect", () => {
    for (const imei of devices) {
      if (live.get(imei)?.socket === socket) {
        live.delete(imei);
        announce(imei, "offline");
      }
    }
  });
});

/** A histogram in iothub's buckets that keeps its largest observation, as Prometheus text. */
function peakHistogram(name, bounds) {
  const counts = new Array(bounds.length + 1).fill(0);
  let sum = 0;
  let max = 0;
  return {
    observe(seconds) {
      const index = bounds.findIndex((bound) => seconds <= bound);
      counts[index < 0 ? bounds.length : index] += 1;
      sum += seconds;
      max = Math.max(max, seconds);
    },
    text() {
      const lines = [`# TYPE ${name}_seconds histogram`];
      let cumulative = 0;
      bounds.forEach((bound, index) => {
        cumulative += counts[index];
        lines.push(`${name}_seconds_bucket{le="${bound}"} ${cumulative}`);
      });
      cumulative += counts[bounds.length];
      lines.push(`${name}_seconds_bucket{le="+Inf"} ${cumulative}`, `${name}_seconds_count ${cumulative}`, `${name}_seconds_sum ${sum}`);
      lines.push(`# TYPE ${name}_max_seconds gauge`, `${name}_max_seconds ${max}`);
      return lines.join("\n");
    },
  };
}

/** How late a timer due every period runs (what every socket waits), and the part of it the process was running
 *  (its own stalls: a collection, a long callback), as iothub's LagMonitor measures them. */
const lag = (() => {
  const periodNs = BigInt(Math.round(peer.lagPeriodS * 1e9));
  const late = peakHistogram("iothub_event_loop_lag", peer.lagBucketsS);
  const busy = peakHistogram("iothub_event_loop_busy_lag", peer.lagBucketsS);
  let due = process.hrtime.bigint() + periodNs;
  let cpu = process.cpuUsage();
  const tick = () => {
    const now = process.hrtime.bigint();
    const used = process.cpuUsage(cpu);
    const lateS = Math.max(0, Number(now - due) / 1e9);
    late.observe(lateS);
    busy.observe(Math.min(lateS, (used.user + used.system) / 1e6));
    due = now + periodNs;
    cpu = process.cpuUsage();
    setTimeout(tick, peer.lagPeriodS * 1000);
  };
  setTimeout(tick, peer.lagPeriodS * 1000);
  return { text: () => `${late.text()}\n${busy.text()}\n` };
})();

server.listen(Number(options.port), options.host, () => console.log(`node peer listening on ${options.host}:${options.port}`));
process.on("SIGTERM", () => io.close(() => process.exit(0)));
