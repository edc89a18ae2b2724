"""The interop modules' shared fixture: socket.io-client installed once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from .test_interop_js import NPM_TIMEOUT, SCRIPTS, JsClient, _text


@pytest.fixture(scope="session")
def js(tmp_path_factory: pytest.TempPathFactory) -> JsClient:
    """``npm install socket.io-client@4`` into a folder of our own, with the interop scripts copied in.

    ESM ignores NODE_PATH, so the scripts live next to their node_modules.
    A failure is recorded and fails every test that uses the client.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return JsClient(None, None, None, "the interop tests need Node.js and npm on PATH (node: %s, npm: %s)" % (node, npm))
    folder = tmp_path_factory.mktemp("socketio-client")
    (folder / "package.json").write_text(
        json.dumps({"name": "iothub-interop", "version": "0.0.0", "private": True, "type": "module"})
    )
    command = [npm, "install", "socket.io-client@4", "--no-audit", "--no-fund"]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        installed = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        return JsClient(
            None, None, None,
            f"`{' '.join(command[1:])}` did not finish within {NPM_TIMEOUT} s — is the npm registry "
            f"(https://registry.npmjs.org) reachable?\n{_text(expired.stdout)}{_text(expired.stderr)}",
        )
    manifest = folder / "node_modules" / "socket.io-client" / "package.json"
    if installed.returncode != 0 or not manifest.exists():
        return JsClient(
            None, None, None,
            f"`npm {' '.join(command[1:])}` failed (exit code {installed.returncode}) — is the npm registry "
            f"(https://registry.npmjs.org) reachable?\n{installed.stdout}{installed.stderr}",
        )
    version = json.loads(manifest.read_text())["version"]
    if not version.startswith("4."):
        return JsClient(None, None, version, f"npm installed socket.io-client {version}, not 4.x")
    for script in ("device.mjs", "dashboard.mjs", "fleet.mjs"):
        shutil.copy(SCRIPTS / script, folder / script)
    return JsClient(folder, node, version, None)
