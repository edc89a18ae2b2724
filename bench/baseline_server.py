"""The baseline: the same protocol written plainly with python-socketio's defaults.

Stdlib json, dicts, a room per owner, ``await sio.emit`` per message — the way
the seed's server is usually written in Python. ``iothub bench --server
baseline`` runs it so that every figure of this project is a ratio measured in
the same run. It implements what the benchmark exercises (register, telemetry
with alerts, heartbeat, subscribe), not the whole of PROTOCOL.md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
app = web.Application()
sio.attach(app)

devices: dict[str, dict] = {}
owners: dict[str, str] = {}
last_telemetry: dict[str, dict] = {}

RULES = [
    ("crashDetection", lambda v: v > 0, "crash_detected", "critical", "Crash detected!", "CRASH_DETECTED"),
    ("batteryVoltage", lambda v: v < 12.0, "vehicle_alert", "warning", "Low battery voltage detected", "LOW_BATTERY"),
    ("engineRpm", lambda v: v > 4000, "vehicle_alert", "warning", "High engine RPM detected", "HIGH_RPM"),
    ("dtc", lambda v: v > 0, "vehicle_alert", "warning", "Diagnostic trouble code detected", "DTC_DETECTED"),
]


@sio.event
async def register_device(sid, payload):
    if not isinstance(payload, dict) or not isinstance(payload.get("imei"), str):
        return {"success": False, "code": "INVALID_IMEI", "message": "imei must be a string of 15 digits"}
    imei = payload["imei"]
    if payload.get("userEmail"):
        owners[imei] = payload["userEmail"].lower()
    now = int(time.time() * 1000)
    devices[imei] = {"socketId": sid, "connectedAt": now, "lastHeartbeat": now, "userEmail": owners.get(imei)}
    return {"success": True, "imei": imei, "message": "Device registered successfully"}


@sio.event
async def telemetry_data(sid, payload):
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        return {"success": False, "code": "INVALID_PAYLOAD", "message": "data must be an object"}
    imei: Any = payload.get("imei")  # whatever the client sent; not checked, as in the plain server
    device = devices.get(imei)
    if device is None or device["socketId"] != sid:
        return {"success": False, "code": "DEVICE_NOT_REGISTERED", "message": "register first"}
    data = payload["data"]
    timestamp = payload.get("timestamp") or int(time.time() * 1000)
    device["lastHeartbeat"] = int(time.time() * 1000)
    last_telemetry[imei] = {"imei": imei, "timestamp": timestamp, "data": data}
    owner = device["userEmail"]
    if owner:
        await sio.emit("telemetry_update", {"type": "telemetry_update", "imei": imei, "timestamp": timestamp, "data": data}, room=owner)
        for field, fires, event, level, message, code in RULES:
            value = data.get(field)
            if isinstance(value, (int, float)) and fires(value):
                alert = {"level": level, "message": message, "code": code}
                await sio.emit(event, {"type": event, "imei": imei, "timestamp": timestamp, "data": data, "alert": alert}, room=owner)
    return {"success": True, "message": "Telemetry processed successfully"}


@sio.event
async def heartbeat(sid, payload):
    imei: Any = payload.get("imei") if isinstance(payload, dict) else None  # None is never a key
    device = devices.get(imei)
    if device is None:
        return {"success": False, "code": "DEVICE_NOT_REGISTERED", "message": "register first"}
    device["lastHeartbeat"] = int(time.time() * 1000)
    return {"success": True, "imei": payload["imei"], "timestamp": device["lastHeartbeat"]}


@sio.event
async def subscribe_user(sid, payload):
    email = payload.get("email", "").lower() if isinstance(payload, dict) else ""
    await sio.enter_room(sid, email)
    owned = [imei for imei, owner in owners.items() if owner == email]
    telemetries = [last_telemetry[imei] for imei in owned if imei in last_telemetry]
    return {"success": True, "email": email, "deviceCount": len(owned), "telemetries": telemetries}


@sio.event
async def disconnect(sid, reason=None):
    for imei in [imei for imei, device in devices.items() if device["socketId"] == sid]:
        del devices[imei]


async def health(request):
    return web.json_response({"status": "OK", "connectedDevices": len(devices)})


app.router.add_get("/health", health)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6163)
    args = parser.parse_args()
    web.run_app(app, host=args.host, port=args.port, print=lambda _: print(f"baseline listening on {args.port}", flush=True))
