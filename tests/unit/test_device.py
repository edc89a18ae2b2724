"""DeviceActor: one live device's heartbeat, last state, alert cooldown and expiry."""

from __future__ import annotations

import pytest
from msgspec import Raw

from iothub.core.device import DeviceActor
from iothub.core.protocol import DeviceInfo

IMEI = "356938035643809"
T0 = 1_700_000_000_000
COOLDOWN = 60_000


def actor(now: int = T0, owner: str | None = "owner@example.com") -> DeviceActor:
    return DeviceActor(IMEI, "sid-1", owner, now)


def test_new_actor_is_connected_now_with_no_state() -> None:
    device = actor()
    assert (device.connected_at, device.last_heartbeat) == (T0, T0)
    assert device.last_timestamp is None
    assert device.last_data is None
    assert device.info() == DeviceInfo(IMEI, "sid-1", T0, T0, "owner@example.com")


def test_heartbeat_refreshes_last_heartbeat_only() -> None:
    device = actor()
    device.heartbeat(T0 + 5)
    assert device.last_heartbeat == T0 + 5
    assert device.connected_at == T0
    assert device.last_data is None


def test_observe_sets_last_state_and_counts_as_heartbeat() -> None:
    """The heartbeat is the server's clock, the last state keeps the message's own timestamp."""
    device = actor()
    data = Raw(b'{"speed":1}')
    device.observe(T0 - 10_000, data, T0 + 7)
    assert device.last_timestamp == T0 - 10_000
    assert device.last_data is data
    assert device.last_heartbeat == T0 + 7
    assert device.info().lastHeartbeat == T0 + 7


def test_older_message_does_not_replace_newer_state_but_still_counts_as_heartbeat() -> None:
    device = actor()
    newer, older = Raw(b'{"n":2}'), Raw(b'{"n":1}')
    device.observe(T0 + 100, newer, T0 + 1)
    device.observe(T0 + 50, older, T0 + 2)
    assert (device.last_timestamp, device.last_data) == (T0 + 100, newer)
    assert device.last_heartbeat == T0 + 2


def test_message_with_the_same_timestamp_replaces_state() -> None:
    """Equal timestamps: the later arrival wins."""
    device = actor()
    first, second = Raw(b'{"n":1}'), Raw(b'{"n":2}')
    device.observe(T0, first, T0)
    device.observe(T0, second, T0 + 1)
    assert device.last_data is second


def test_first_alert_of_a_code_may_go_out() -> None:
    assert actor().may_alert("LOW_BATTERY", T0, COOLDOWN)


def test_first_alert_at_time_zero_may_go_out() -> None:
    assert actor(now=0).may_alert("LOW_BATTERY", 0, COOLDOWN)


@pytest.mark.parametrize(("after", "allowed"), [(0, False), (1, False), (COOLDOWN - 1, False), (COOLDOWN, True), (COOLDOWN * 10, True)])
def test_repeat_is_held_back_until_the_cooldown_has_passed(after: int, allowed: bool) -> None:
    device = actor()
    assert device.may_alert("LOW_BATTERY", T0, COOLDOWN)
    assert device.may_alert("LOW_BATTERY", T0 + after, COOLDOWN) is allowed


def test_held_back_repeat_does_not_restart_the_cooldown() -> None:
    device = actor()
    assert device.may_alert("LOW_BATTERY", T0, COOLDOWN)
    assert not device.may_alert("LOW_BATTERY", T0 + COOLDOWN - 1, COOLDOWN)
    assert device.may_alert("LOW_BATTERY", T0 + COOLDOWN, COOLDOWN)
    assert not device.may_alert("LOW_BATTERY", T0 + COOLDOWN + 1, COOLDOWN)


def test_cooldown_is_per_code() -> None:
    device = actor()
    assert device.may_alert("LOW_BATTERY", T0, COOLDOWN)
    assert device.may_alert("HIGH_RPM", T0 + 1, COOLDOWN)
    assert not device.may_alert("HIGH_RPM", T0 + 2, COOLDOWN)


def test_cooldown_is_per_device() -> None:
    one, other = actor(), DeviceActor("490154203237518", "sid-2", None, T0)
    assert one.may_alert("LOW_BATTERY", T0, COOLDOWN)
    assert other.may_alert("LOW_BATTERY", T0, COOLDOWN)


def test_zero_cooldown_never_holds_back() -> None:
    device = actor()
    assert all(device.may_alert("LOW_BATTERY", T0, 0) for _ in range(5))


@pytest.mark.parametrize(("silence", "expired"), [(0, False), (300_000, False), (300_001, True)])
def test_expired_after_more_than_the_timeout_of_silence(silence: int, expired: bool) -> None:
    assert actor().expired(T0 + silence, 300_000) is expired


@pytest.mark.parametrize("keep_alive", ["heartbeat", "observe"])
def test_heartbeat_and_telemetry_postpone_expiry(keep_alive: str) -> None:
    device = actor()
    if keep_alive == "heartbeat":
        device.heartbeat(T0 + 200_000)
    else:
        device.observe(T0, Raw(b"{}"), T0 + 200_000)
    assert not device.expired(T0 + 400_000, 300_000)
    assert device.expired(T0 + 500_001, 300_000)
