"""The paced collector: Python's trigger off, collections on the loop's clock, what survives a full one frozen."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from aiohttp import web

from iothub.heap import PACE_S, Pacing, pace_collector


class Node:
    """A tracked object that can be made part of a cycle."""

    other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen and the collector on, as a process does."""
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.enable()


def frozen(item: object) -> bool:
    return not any(each is item for each in gc.get_objects())  # the permanent generation is not listed


def cycle() -> weakref.ref[Node]:
    """A cycle nothing else refers to: garbage only the collector can free."""
    node = Node()
    node.other = node
    return weakref.ref(node)


async def test_what_exists_at_start_is_frozen_garbage_freed_and_pythons_trigger_off() -> None:
    built, gone = Node(), cycle()
    pacing = Pacing()
    pacing.start()
    try:
        assert frozen(built) and gone() is None
        assert not gc.isenabled()
    finally:
        pacing.stop()
    assert gc.isenabled()


async def test_on_the_clock_cycles_are_freed_and_survivors_frozen() -> None:
    pacing = Pacing()
    pacing.start()
    try:
        later, gone = Node(), cycle()
        assert not frozen(later)
        await asyncio.sleep(PACE_S * 3)
        assert gone() is None and frozen(later)
    finally:
        pacing.stop()


async def test_stopped_it_collects_no_more() -> None:
    pacing = Pacing()
    pacing.start()
    pacing.stop()
    gc.disable()
    gone = cycle()
    await asyncio.sleep(PACE_S * 3)
    assert gone() is not None


async def test_a_served_application_is_paced_from_startup_to_cleanup() -> None:
    app = web.Application()
    pace_collector(app)
    built = Node()
    runner = web.AppRunner(app)
    await runner.setup()
    assert frozen(built) and not gc.isenabled()
    await runner.cleanup()
    assert gc.isenabled()
