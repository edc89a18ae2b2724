"""Reading ``/metrics`` as Prometheus does: with prometheus-client's own parser, into comparable samples."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

#: A sample's name and its labels, sorted: ``("iothub_alerts_total", (("code", "LOW_BATTERY"), ("level", "warning")))``.
Key = tuple[str, tuple[tuple[str, str], ...]]


class Scrape:
    """One scrape's samples, and its metric families' types."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[Key, float] = {}
        self.types: dict[str, str] = {}
        self.help: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            self.help[family.name] = family.documentation
            for sample in family.samples:
                self.samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name, tuple(sorted(labels.items()))]

    def by(self, name: str, label: str) -> dict[str, float]:
        """Every sample of ``name`` as label value → value, for a metric with that one label."""
        return {dict(labels)[label]: value for (sample, labels), value in self.samples.items() if sample == name}

    def minus(self, earlier: Scrape) -> dict[Key, float]:
        """What moved since ``earlier``: samples whose value changed, by how much (new samples in full)."""
        moved: dict[Key, float] = {}
        for key, value in self.samples.items():
            delta = value - earlier.samples.get(key, 0.0)
            if delta:
                moved[key] = delta
        return moved


async def scrape(http: aiohttp.ClientSession, url: str, **headers: Any) -> Scrape:
    async with http.get(url + "/metrics", headers=headers) as response:
        text = await response.text()
        assert response.status == 200, (response.status, text[:300])
        assert response.content_type == "text/plain", response.content_type
        return Scrape(text)
