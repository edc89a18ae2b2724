// The seed's "User Connection Example", driven by the interop test.
//
//   node dashboard.mjs <url> <transport> <email> [imei]
//
// Subscribes to <email> and prints everything it receives. With [imei] it
// stays until that device's device_status "offline" arrives (the device's
// last event); without, it leaves as soon as the subscription is answered
// (a snapshot of the user's devices).
//
// Environment:
//   IOTHUB_STYLE       "event" (default): plain emit, the reply arrives as the
//                      event user_subscribed, as in the seed; "ack": the emit
//                      carries a callback and the reply is its payload.
//   IOTHUB_TOKEN       sent as the handshake's auth: {token} when set.
//   IOTHUB_TIMEOUT_MS  hard limit for the whole run (default 15000).
//
// Every line on stdout is one JSON object:
//   {kind: "start"|"connect"|"ack"|"event"|"ready"|"connect_error"|"done"|"timeout", ...}
// "ready" follows the subscription's reply: from then on the dashboard is
// subscribed. Exit codes: 0 done, 2 timed out, 3 connect_error.
import { io } from 'socket.io-client';

const [url, transport, email, imei] = process.argv.slice(2);
if (!url || !transport || !email) {
  console.error('usage: node dashboard.mjs <url> <transport> <email> [imei]');
  process.exit(64);
}
const style = process.env.IOTHUB_STYLE || 'event';
const token = process.env.IOTHUB_TOKEN;
const timeoutMs = Number(process.env.IOTHUB_TIMEOUT_MS || 15000);

const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

const watchdog = setTimeout(() => {
  print({ kind: 'timeout', after_ms: timeoutMs });
  process.exit(2);
}, timeoutMs);

function finish(code) {
  clearTimeout(watchdog);
  leave(socket, code);
}

// Close the socket and end the process with `code`. Over websocket Node exits
// by itself once the socket is closed. Over polling the client sends its last
// packets and then the Engine.IO close packet as POSTs, but the server leaves
// the last long-poll GET unanswered (for up to pingInterval + pingTimeout),
// which would keep Node alive: so exit once the close packet's POST is through
// (the transport's 'drain' after the engine's 'close'). The timer only bounds
// the wait.
function leave(socket, code) {
  const engine = socket.io.engine;
  process.exitCode = code;
  const exitOnceClosePacketIsThrough = () => {
    const transport = engine.transport;
    if (transport.writable === false) transport.once('drain', () => process.exit(code));
    else process.exit(code);
  };
  if (engine && engine.transport && engine.transport.name === 'polling') {
    // After a refused CONNECT the client has closed the engine already.
    if (engine.readyState === 'closed') exitOnceClosePacketIsThrough();
    else engine.once('close', exitOnceClosePacketIsThrough);
  }
  socket.disconnect();
  setTimeout(() => process.exit(code), 2000).unref();
}

print({ kind: 'start', now: Date.now(), style, transport });

const options = { transports: [transport], reconnection: false };
if (token) options.auth = { token };
const socket = io(url, options);

const received = (event) => (payload) => print({ kind: 'event', event, payload: payload ?? null });
const LISTENED = new Set(['user_subscribed', 'error', 'telemetry_update', 'vehicle_alert', 'crash_detected', 'device_status']);
// Whatever else the server sends this socket (nothing, if all is well).
socket.onAny((event, ...args) => {
  if (!LISTENED.has(event)) received(event)(args[0]);
});

socket.on('connect', () => {
  print({ kind: 'connect', transport: socket.io.engine.transport.name });

  // Subscribe to user updates
  if (style === 'ack') {
    socket.emit('subscribe_user', { email: email }, (reply) => {
      print({ kind: 'ack', event: 'subscribe_user', payload: reply });
      subscribed(reply);
    });
  } else {
    socket.emit('subscribe_user', {
      email: email
    });
  }
});

socket.on('user_subscribed', (reply) => {
  received('user_subscribed')(reply);
  subscribed(reply);
});

socket.on('error', (error) => {
  received('error')(error);
  subscribed(error);
});

let ready = false;
function subscribed(reply) {
  if (ready) return;
  ready = true;
  print({ kind: 'ready', success: reply?.success === true });
  if (!imei || reply?.success !== true) finish(0);
}

socket.on('connect_error', (error) => {
  print({ kind: 'connect_error', message: error.message, data: error.data ?? null });
  finish(3);
});

// Listen for telemetry updates
socket.on('telemetry_update', (event) => {
  received('telemetry_update')(event);
});

// Listen for alerts
socket.on('vehicle_alert', (event) => {
  received('vehicle_alert')(event);
});

socket.on('crash_detected', (event) => {
  received('crash_detected')(event);
});

// Devices going online and offline
socket.on('device_status', (event) => {
  received('device_status')(event);
  if (imei && event.imei === imei && event.status === 'offline') {
    print({ kind: 'done', transport: socket.io.engine.transport.name, now: Date.now() });
    finish(0);
  }
});
