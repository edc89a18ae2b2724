"""The layers of docs/architecture.md, held: what each subpackage may import, and what the server never loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import iothub

PACKAGE = Path(iothub.__file__).parent

#: Each layer and the other parts of iothub (and third-party front-end libraries) it may import.
ALLOWED = {
    "core": set(),
    "persistence": {"core", "config"},
    "frontend": {"core", "config"},
    "http": {"core", "persistence"},
    "loadgen": {"core"},
    "cluster": {"core", "config", "app", "persistence", "tls", "logs"},
}
FRONT_END_LIBRARIES = {"aiohttp", "socketio", "engineio"}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = node.module if node.level == 0 else ".".join(filter(None, (base, node.module)))
            names.add(module or base)
            if node.module is None:
                names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_what_it_may(layer: str) -> None:
    wrong = {}
    for path in (PACKAGE / layer).rglob("*.py"):
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] == "iothub" and len(parts) > 1 and parts[1] not in {layer, *ALLOWED[layer]}:
                wrong[f"{path.relative_to(PACKAGE)}"] = name
            if layer == "core" and parts[0] in FRONT_END_LIBRARIES:
                wrong[f"{path.relative_to(PACKAGE)}"] = name
    assert wrong == {}


def test_the_server_loads_neither_the_load_generator_nor_the_benchmark() -> None:
    probe = "import sys, iothub.app, iothub.cli; print(sorted(m for m in sys.modules if m.startswith(('iothub.loadgen', 'bench'))))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_one_process_imports_neither_motor_nor_ray() -> None:
    """``iothub serve`` with one worker (the default) builds its application without Ray, or motor for SQLite."""
    probe = (
        "import sys, iothub.cli; from iothub.app import Hub; from iothub.config import Settings; "
        "Hub(Settings.load({}, store='memory')).application(); print('motor' in sys.modules, 'ray' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False False"


def test_only_the_cluster_imports_ray() -> None:
    importers = {
        str(path.relative_to(PACKAGE).parent) for path in PACKAGE.rglob("*.py") if any(name.split(".")[0] == "ray" for name in imports_of(path))
    }
    assert importers == {"cluster"}


def test_only_the_http_layers_metrics_module_imports_prometheus_client() -> None:
    """The counters are plain integers everywhere; prometheus-client meets them at scrape time only."""
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name.split(".")[0] == "prometheus_client" for name in imports_of(path))
    }
    assert importers == {"http/metrics.py"}
