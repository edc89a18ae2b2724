"""The dashboard page in headless Chromium, against a real server, while real Socket.IO devices send telemetry.

What a person would check, checked in the page's DOM: the device appears with
its marker and live readings, alerts arrive (a crash unmissably), the detail
shows a chart and the stored history, the device goes offline when it leaves;
production refuses a bad token; an operator sees counts and broadcasts; the
page comes back by itself after the server restarts; five hundred devices at
ten messages a second each are all shown without redrawing the whole list.
Screenshots of these states go to ``build/screenshots/``.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Locator, Page, expect

from iothub.loadgen.fleet import Device, Tally, start_all

from ..support.clients import until
from ..support.server import start_server
from .conftest import screenshot_path

# Chromium, a server and a fleet of five hundred on two cores take longer than a unit test.
pytestmark = pytest.mark.timeout(240)

WAIT_MS = 10_000
NEW_YORK = {"latitude": 40.7128, "longitude": -74.0060}


def row(page: Page, imei: str) -> Locator:
    return page.locator(f'#device-rows tr[data-imei="{imei}"]')


async def stats(page: Page) -> dict[str, Any]:
    return await page.evaluate("window.iothubStats")


async def signed_in(page: Page, url: str, subscriptions: int = 1) -> None:
    await page.goto(url)
    await expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    await page.wait_for_function(f"window.iothubStats.subscriptions >= {subscriptions}", timeout=WAIT_MS)


async def test_the_page_follows_a_device(server, page, open_client, imei, email):
    owner, box = email(), imei()
    token = server.token(owner, "user")
    await signed_in(page, f"{server.url}/?token={token}")
    assert "token=" not in page.url  # it left the address bar
    await expect(page.locator("#who")).to_have_text(f"{owner} (user)")

    device = await open_client(server.url)
    await device.register(box, owner)
    await expect(row(page, box).locator(".status")).to_have_text("online", timeout=WAIT_MS)
    await device.telemetry(box, {"speed": 42, "engineRpm": 2100, "batteryVoltage": 12.7, "position": NEW_YORK})
    await device.telemetry(box, {"speed": 55.5, "engineRpm": 2300, "batteryVoltage": 11.4, "position": NEW_YORK,
                                 "cabinTemperature": 21.5, "tags": ["night shift"]})  # fmt: skip
    cells = row(page, box).locator("td")
    await expect(cells.nth(4)).to_have_text("55.5", timeout=WAIT_MS)  # speed, live
    await expect(cells.nth(6)).to_have_text("11.4")
    await expect(cells.nth(6)).to_have_class("alerting")  # below the LOW_BATTERY threshold
    await expect(cells.nth(3)).not_to_have_class("alerting")
    markers = await page.evaluate("window.iothubMarkers()")
    assert markers == [{"imei": box, "lat": 40.7128, "lng": -74.006, "color": "#d62828", "fillOpacity": 0.8}]

    alert = page.locator("#alert-feed li").first
    await expect(alert).to_contain_text(f"{box} · LOW_BATTERY · Low battery voltage detected", timeout=WAIT_MS)
    await expect(alert).to_have_class("warning")
    await expect(page.locator("#crash-banner")).to_be_hidden()

    await device.telemetry(box, {"speed": 0, "crashDetection": 1, "position": {"latitude": 40.7150, "longitude": -74.0020}})
    await expect(page.locator("#crash-banner")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#crash-text")).to_contain_text(box)
    newest = page.locator("#alert-feed li").first
    await expect(newest).to_contain_text("CRASH_DETECTED")
    await expect(newest).to_have_class("critical crash")
    await page.wait_for_function("window.iothubMarkers()[0].lat === 40.715", timeout=WAIT_MS)

    await row(page, box).click()
    await expect(page.locator("#detail-title")).to_have_text(box)
    await expect(page.locator("#chart .uplot")).to_have_count(1)
    await expect(page.locator("#chart-field")).to_have_value("speed")
    await expect(page.locator("#detail-readings")).to_contain_text("crashDetection")
    await expect(page.locator("#history-note")).to_have_text("3 stored messages, newest first", timeout=WAIT_MS)
    await expect(page.locator("#history-rows tr")).to_have_count(3)
    await page.screenshot(path=screenshot_path("dashboard-crash"), full_page=True)

    await device.disconnect()
    await expect(row(page, box).locator(".status")).to_have_text("offline", timeout=WAIT_MS)
    # still red (its last reading was a crash), but pale: offline
    await page.wait_for_function("window.iothubMarkers()[0].fillOpacity === 0.25", timeout=WAIT_MS)
    assert (await page.evaluate("window.iothubMarkers()"))[0]["color"] == "#d62828"
    await page.screenshot(path=screenshot_path("dashboard-offline"), full_page=True)


async def test_bad_data_does_not_break_the_page(server, page, open_client, imei, email):
    owner, box, quiet = email(), imei(), imei()
    await signed_in(page, f"{server.url}/?email={owner}")
    device = await open_client(server.url)
    await device.register(box, owner)
    await device.register(quiet, owner)
    for data in (
        {},  # nothing at all
        {"speed": 12, "engineRpm": None, "position": None},
        {"speed": 13, "unknown": "x" * 500},
        {"speed": 14, "odd": {"deeply": [{"nested": None}]}, "label": "<b>not markup</b>"},
    ):
        await device.telemetry(box, data)
    await expect(row(page, box).locator("td").nth(4)).to_have_text("14", timeout=WAIT_MS)
    await expect(row(page, box).locator("td").nth(9)).to_have_text("—")  # no usable position: no marker
    assert await page.evaluate("window.iothubMarkers()") == []
    await expect(row(page, quiet).locator(".status")).to_have_text("online")
    await row(page, box).click()
    await expect(page.locator("#detail-readings")).to_contain_text("<b>not markup</b>")  # as text, never as markup
    assert await page.locator("#detail-readings b").count() == 0
    await expect(page.locator("#detail-readings")).to_contain_text('{"deeply":[{"nested":null}]}')
    await expect(page.locator("#history-note")).to_have_text("Sign in with a token to read the history.")


async def test_production_refuses_a_bad_token_and_lets_an_operator_in(server_factory, page, open_client, email):
    server = server_factory(IOTHUB_ENV="production")
    await page.goto(f"{server.url}/?token=not-a-valid-token")
    await expect(page.locator("#sign-in-error")).to_have_text("Sign-in refused: token is not valid", timeout=WAIT_MS)
    await expect(page.locator("#board")).to_be_hidden()
    await expect(page.locator("#connection")).to_have_text("refused")
    await page.screenshot(path=screenshot_path("dashboard-refused"))

    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#sign-in-error")).to_have_text("Production needs a token.")

    owner = email()
    listener = await open_client(server.url, token=server.token(owner, "user"))
    await listener.subscribe(owner)
    await page.fill("#token", server.token("ops@example.com", "admin"))
    await page.fill("#email", owner)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator("#admin")).to_be_visible()
    await expect(page.locator("#admin-counts")).to_contain_text("connections", timeout=WAIT_MS)
    await page.fill("#broadcast-message", "Maintenance at noon")
    await page.click("#broadcast-form button")
    await expect(page.locator("#broadcast-result")).to_have_text("sent to 2 sockets", timeout=WAIT_MS)  # the page and the listener
    assert await listener.wait_event("system_notification") == {"message": "Maintenance at noon"}


async def test_the_page_comes_back_after_a_restart(tmp_path, page, open_client, imei, email):
    owner, box = email(), imei()
    first = start_server(tmp_path)
    try:
        await signed_in(page, f"{first.url}/?email={owner}")
        device = await open_client(first.url)
        await device.register(box, owner)
        await device.telemetry(box, {"speed": 10, "position": NEW_YORK})
        await expect(row(page, box).locator("td").nth(4)).to_have_text("10", timeout=WAIT_MS)
    finally:
        assert first.stop() == 0
    await expect(page.locator("#connection")).to_have_text("reconnecting…", timeout=WAIT_MS)
    await expect(row(page, box).locator(".status")).to_have_text("online")  # nothing said otherwise yet

    second = start_server(tmp_path, port=first.port)  # the same port and SQLite file
    try:
        await page.wait_for_function("window.iothubStats.subscriptions >= 2", timeout=20_000)  # reconnected, subscribed again
        await expect(row(page, box).locator(".status")).to_have_text("offline")  # the device has not come back yet
        await expect(row(page, box).locator("td").nth(4)).to_have_text("10")  # its last reading, from the store
        device = await open_client(second.url)
        await device.register(box, owner)
        await device.telemetry(box, {"speed": 20, "position": NEW_YORK})
        await expect(row(page, box).locator("td").nth(4)).to_have_text("20", timeout=WAIT_MS)
        await expect(row(page, box).locator(".status")).to_have_text("online")
    finally:
        second.stop()


async def test_five_hundred_devices_at_ten_messages_a_second(server_factory, page):
    """500 devices × 10 msg/s for 3 s: every message reaches the page, and no message costs more than one row update."""
    server = server_factory()
    devices_count, rate, seconds = 500, 10, 3
    owner = "owner0@fleet.example"  # the load generator's first owner: with one owner, all devices are hers
    await signed_in(page, f"{server.url}/?email={owner}&token={server.token('ops@example.com', 'admin')}")
    tally = Tally()
    rng = random.Random(7)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        fleet = [Device(session, server.url, index, 1, tally, rng) for index in range(devices_count)]
        await start_all(fleet, 50)
        await page.wait_for_function(f"document.querySelectorAll('#device-rows tr').length === {devices_count}", timeout=30_000)
        before = await stats(page)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for tick in range(rate * seconds):
            for device in fleet:
                device.send()
            await asyncio.sleep(max(0.0, start + (tick + 1) / rate - loop.time()))
        sent = devices_count * rate * seconds
        await until(lambda: tally.acked == sent, timeout=60)
        await page.wait_for_function(f"window.iothubStats.messages >= {before['messages'] + sent}", timeout=60_000)
        after = await stats(page)
        latitude, longitude = (round(value, 6) for value in fleet[123].position)
        # the last reading's marker, once the next paced frame has drawn it
        await page.wait_for_function(
            f"window.iothubMarkers().some((m) => m.imei === '{fleet[123].imei}' && m.lat === {latitude} && m.lng === {longitude})",
            timeout=WAIT_MS,
        )
        await row(page, fleet[123].imei).click()
        await expect(page.locator("#history-rows tr")).to_have_count(rate * seconds, timeout=WAIT_MS)
        await expect(page.locator("#admin-counts")).to_contain_text(f"{devices_count} devices online", timeout=WAIT_MS)
        await page.screenshot(path=screenshot_path("dashboard-500-devices"), full_page=True)
        for device in fleet:
            await device.client.close()
    assert after["messages"] - before["messages"] == sent
    assert after["rowsCreated"] == devices_count
    # a message marks its device; a frame renders each marked device once: fewer renders than messages, never
    # a whole list per message (that would be 500 × 15000)
    assert after["rowRenders"] - before["rowRenders"] <= sent
    assert after["frames"] - before["frames"] < sent / 100  # paced: a few frames a second, not one per message
    assert len(await page.evaluate("window.iothubMarkers()")) == devices_count
