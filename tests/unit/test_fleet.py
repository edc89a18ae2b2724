"""The simulated fleet's readings: the alerts it expects are exactly the ones the rules fire."""

from __future__ import annotations

import random
from collections import Counter

import aiohttp
import msgspec
import pytest

from iothub.core.alerts import AlertEngine
from iothub.core.rules import DEFAULT_RULES, AlertRule, merge_rules
from iothub.loadgen.fleet import Device, Tally, alert_readings


@pytest.mark.parametrize(
    "rules",
    [
        DEFAULT_RULES,
        merge_rules([{"code": "HIGH_RPM", "threshold": 6500}, {"code": "LOW_BATTERY", "op": "<=", "threshold": 11}]),
        merge_rules([{"code": "ODD", "field": "dtc", "op": "!=", "threshold": 0, "level": "info", "message": "m"}]),
    ],
    ids=["default rules", "changed thresholds and operators", "an extra rule"],
)
def test_each_derived_reading_fires_its_own_rule(rules: tuple[AlertRule, ...]) -> None:
    engine = AlertEngine(rules)
    for code, reading in alert_readings(rules).items():
        fired = {engine.rules[index].code for index in engine.check(msgspec.json.encode(reading))}
        assert code in fired, (code, reading)


async def test_the_alerts_a_fleet_expects_are_the_alerts_the_default_rules_fire() -> None:
    engine = AlertEngine()
    tally = Tally()
    fired: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        device = Device(session, "http://127.0.0.1:9", 0, 1, tally, random.Random(3))
        for _ in range(3000):
            for index in engine.check(msgspec.json.encode(device.reading())):
                fired[engine.rules[index].code] += 1
    assert sum(tally.alerts_sent.values()) > 200
    assert fired == tally.alerts_sent
