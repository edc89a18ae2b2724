// Many official clients at once, with socket.io-client's default options
// (long-polling first, then the WebSocket upgrade), driven by the interop test.
//
//   node fleet.mjs <url> <count> <userEmail> <firstImei>
//
// A dashboard subscribes to userEmail; then <count> devices (imeis firstImei,
// firstImei + 1, …) connect, register for userEmail and send one telemetry
// message each, every request acknowledged. It prints one JSON line when every
// device has upgraded and the dashboard has every update, or when it times out:
//   {kind: "done"|"timeout", connected, acknowledged, upgraded, updates: [imei, …], errors: [...]}
import { io } from 'socket.io-client';

const [url, countText, userEmail, firstImei] = process.argv.slice(2);
const count = Number(countText);
const timeoutMs = Number(process.env.IOTHUB_TIMEOUT_MS || 30000);
const state = { connected: 0, acknowledged: 0, upgraded: 0, updates: [], errors: [] };
const sockets = [];

const finish = (kind) => {
  process.stdout.write(JSON.stringify({ kind, ...state }) + '\n');
  for (const socket of sockets) socket.close();
  process.exit(kind === 'done' ? 0 : 2);
};
const check = () => {
  if (state.acknowledged === count && state.upgraded === count && state.updates.length === count) finish('done');
};
setTimeout(() => finish('timeout'), timeoutMs);

const open = () => {
  const socket = io(url, { reconnection: false, forceNew: true });
  sockets.push(socket);
  socket.on('connect_error', (error) => state.errors.push(String(error.message)));
  return socket;
};

const dashboard = open();
dashboard.on('telemetry_update', (update) => { state.updates.push(update.imei); check(); });
dashboard.on('connect', () => {
  dashboard.emit('subscribe_user', { email: userEmail }, () => {
    for (let index = 0; index < count; index += 1) {
      const imei = (BigInt(firstImei) + BigInt(index)).toString();
      const device = open();
      device.io.engine.on('upgrade', () => { state.upgraded += 1; check(); });
      device.on('connect', () => {
        state.connected += 1;
        device.emit('register_device', { imei, userEmail }, () => {
          device.emit('telemetry_data', { imei, data: { speed: index } }, (reply) => {
            if (reply && reply.success) state.acknowledged += 1;
            else state.errors.push(JSON.stringify(reply));
            check();
          });
        });
      });
    }
  });
});
