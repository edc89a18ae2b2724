"""The dashboard page's files: the vendored libraries are the versions scripts/vendor.sh pins, with their licences,
and a non-editable install carries them all (pyproject's package-data)."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from iothub.http.dashboard import STATIC

ROOT = Path(__file__).resolve().parents[2]
#: Each vendored file, the library it belongs to, and how its header names its version.
HEADERS = {
    "socket.io.min.js": ("SOCKET_IO_CLIENT", r"Socket\.IO v([\d.]+)"),
    "leaflet.js": ("LEAFLET", r"Leaflet ([\d.]+)"),
    "uPlot.iife.min.js": ("UPLOT", r"uPlot \(v([\d.]+)\)"),
}


def pins() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=([\d.]+)$", (ROOT / "scripts" / "vendor.sh").read_text(), re.MULTILINE))


def test_the_vendored_files_are_the_pinned_versions() -> None:
    pinned = pins()
    for name, (pin, header) in HEADERS.items():
        found = re.search(header, (STATIC / "vendor" / name).read_text()[:400])
        assert found is not None and found[1] == pinned[pin], (name, found, pinned[pin])
    versions = (STATIC / "vendor" / "VERSIONS").read_text().split()
    assert versions == ["socket.io-client", pinned["SOCKET_IO_CLIENT"], "leaflet", pinned["LEAFLET"], "uplot", pinned["UPLOT"]]
    for library in ("socket.io-client", "leaflet", "uplot"):
        assert (STATIC / "vendor" / f"{library}.LICENSE").read_text().strip()


def test_the_page_loads_only_its_own_files() -> None:
    page = (STATIC / "index.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(source.startswith(("/static/", "data:")) for source in sources), sources
    for source in sources:
        if source.startswith("/static/"):
            assert (STATIC / source.removeprefix("/static/")).is_file(), source


def test_every_page_file_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["iothub.http"]
    for path in STATIC.rglob("*"):
        if path.is_file():
            relative = path.relative_to(STATIC.parent).as_posix()
            assert any(fnmatch(relative, pattern) for pattern in patterns), relative
