// The seed's "Complete Device Implementation", driven by the interop test.
//
//   node device.mjs <url> <transport> <imei> [userEmail]
//
// Environment:
//   IOTHUB_STYLE       "event" (default): plain emit, replies arrive as the
//                      events device_registered / telemetry_processed, as in
//                      the seed; "ack": every emit carries a callback and the
//                      reply is the acknowledgement's payload.
//   IOTHUB_TOKEN       sent as the handshake's auth: {token} when set.
//   IOTHUB_TELEMETRY   JSON array of `data` objects to send, one telemetry_data
//                      each (default: the seed's example reading).
//   IOTHUB_TIMEOUT_MS  hard limit for the whole run (default 15000).
//
// Every line on stdout is one JSON object:
//   {kind: "start"|"connect"|"sent"|"ack"|"event"|"connect_error"|"refused"|"done"|"timeout", ...}
// Exit codes: 0 done, 2 timed out, 3 connect_error, 4 the server refused a
// request ({success: false}) — the socket is closed before exiting in each case.
import { io } from 'socket.io-client';

const [url, transport, imei, userEmail] = process.argv.slice(2);
if (!url || !transport || !imei) {
  console.error('usage: node device.mjs <url> <transport> <imei> [userEmail]');
  process.exit(64);
}
const style = process.env.IOTHUB_STYLE || 'event';
const token = process.env.IOTHUB_TOKEN;
const timeoutMs = Number(process.env.IOTHUB_TIMEOUT_MS || 15000);
const readings = process.env.IOTHUB_TELEMETRY
  ? JSON.parse(process.env.IOTHUB_TELEMETRY)
  : [{
      engineRpm: 2500,
      speed: 65,
      fuelLevel: 75,
      batteryVoltage: 12.5,
      crashDetection: 0,
      dtc: 0,
      position: { latitude: 40.7128, longitude: -74.0060 },
    }];

const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

class IoTDevice {
  constructor(imei, userEmail) {
    this.imei = imei;
    this.userEmail = userEmail;
    this.socket = null;
    this.connected = false;
  }

  connect() {
    const options = { transports: [transport], reconnection: false };
    if (token) options.auth = { token };
    this.socket = io(url, options);

    // Everything the server sends this socket, reply events and 'error' included.
    this.socket.onAny((event, ...args) => print({ kind: 'event', event, payload: args[0] ?? null }));

    this.socket.on('connect', () => {
      this.connected = true;
      const transport = this.socket.io.engine.transport;
      // The WebSocket extensions agreed (permessage-deflate when the server offers it): the `ws` socket's.
      print({ kind: 'connect', transport: transport.name, extensions: transport.ws?.extensions ?? '' });
      this.run().catch((error) => {
        if (error instanceof Refused) {
          print({ kind: 'refused', event: error.event, payload: error.reply });
          this.finish(4);
        } else {
          console.error(error);
          this.finish(1);
        }
      });
    });

    this.socket.on('connect_error', (error) => {
      print({ kind: 'connect_error', message: error.message, data: error.data ?? null });
      this.finish(3);
    });

    this.socket.on('disconnect', () => {
      this.connected = false;
    });

    this.socket.on('error', (error) => {
      console.error('Socket error:', error);
    });
  }

  // One request/reply: the ack style waits for the callback, the event style
  // for the reply event (or the 'error' event the server sends instead).
  request(event, payload, replyEvent) {
    print({ kind: 'sent', event, payload });
    if (style === 'ack') {
      return new Promise((resolve) => {
        this.socket.emit(event, payload, (reply) => {
          print({ kind: 'ack', event, payload: reply });
          resolve(reply);
        });
      });
    }
    this.socket.emit(event, payload);
    if (!replyEvent) return Promise.resolve(null);
    return new Promise((resolve) => {
      const done = (reply) => {
        this.socket.off(replyEvent, done);
        this.socket.off('error', done);
        resolve(reply);
      };
      this.socket.on(replyEvent, done);
      this.socket.on('error', done);
    });
  }

  async expectSuccess(event, payload, replyEvent) {
    const reply = await this.request(event, payload, replyEvent);
    if (reply !== null && reply.success !== true) throw new Refused(event, reply);
    return reply;
  }

  registerDevice() {
    return this.expectSuccess('register_device', {
      imei: this.imei,
      userEmail: this.userEmail
    }, 'device_registered');
  }

  sendTelemetry(data) {
    return this.expectSuccess('telemetry_data', {
      imei: this.imei,
      timestamp: Date.now(),
      data: data
    }, 'telemetry_processed');
  }

  heartbeat() {
    // The server answers a heartbeat only through an acknowledgement.
    return this.expectSuccess('heartbeat', { imei: this.imei }, null);
  }

  async run() {
    await this.registerDevice();
    for (const [index, data] of readings.entries()) {
      await this.sendTelemetry(data);
      if (index === 0) await this.heartbeat();
    }
    print({ kind: 'done', transport: this.socket.io.engine.transport.name, now: Date.now() });
    this.finish(0);
  }

  finish(code) {
    clearTimeout(watchdog);
    leave(this.socket, code);
  }
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

class Refused extends Error {
  constructor(event, reply) {
    super(`${event} refused`);
    this.event = event;
    this.reply = reply;
  }
}

const watchdog = setTimeout(() => {
  print({ kind: 'timeout', after_ms: timeoutMs });
  process.exit(2);
}, timeoutMs);

print({ kind: 'start', now: Date.now(), style, transport });
const device = new IoTDevice(imei, userEmail);
device.connect();
