"""compose.yaml, checked as far as it can be without a container runtime.

`docker compose up` cannot run on the CI machine, so a mistake in the file would
only show on an operator's. What can be checked here is that it parses, that every
variable it sets or interpolates is one the server reads (a misspelt setting is
silently ignored by the server), and that the pieces agree with each other and
with the Dockerfile.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from iothub.config import ENVIRONMENT

REPO = Path(__file__).resolve().parents[2]
#: What Settings.load reads: each setting's variable, and the seed's NODE_ENV.
SERVER_VARIABLES = frozenset(ENVIRONMENT.values()) | {"NODE_ENV"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_the_server_gets_only_variables_it_reads(compose: dict[str, Any]) -> None:
    environment = compose["services"]["iothub"]["environment"]
    assert isinstance(environment, dict)
    assert set(environment) <= SERVER_VARIABLES, set(environment) - SERVER_VARIABLES


def test_interpolated_variables_are_settings_of_the_server() -> None:
    """``${NAME:-default}`` passes an operator's setting through; NAME must be one the server reads."""
    names = set(re.findall(r"\$\{(\w+)", (REPO / "compose.yaml").read_text()))
    assert names, "the operator's settings (IOTHUB_ENV, JWT_SECRET) should pass through"
    assert names <= SERVER_VARIABLES, names - SERVER_VARIABLES


def test_the_server_uses_the_mongo_service_once_it_is_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    uri = urlsplit(services["iothub"]["environment"]["MONGODB_URI"])
    assert uri.scheme == "mongodb"
    assert uri.hostname in services
    assert services["iothub"]["depends_on"][uri.hostname] == {"condition": "service_healthy"}
    assert services[uri.hostname]["healthcheck"]["test"]


def test_the_server_is_built_here_and_published_on_the_port_the_image_exposes(compose: dict[str, Any]) -> None:
    server = compose["services"]["iothub"]
    assert (REPO / server["build"] / "Dockerfile").is_file()
    exposed = re.findall(r"^EXPOSE\s+(\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert [port.rsplit(":", 1)[1] for port in server["ports"]] == exposed


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {
        mount.split(":", 1)[0]
        for service in compose["services"].values()
        for mount in service.get("volumes", [])
        if not mount.startswith((".", "/"))
    }
    assert used and used <= set(compose.get("volumes") or {})
