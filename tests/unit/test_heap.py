"""The paced collector: cyclic garbage is collected before a pass freezes what survived, and only then."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from aiohttp import web

from iothub.heap import PACE_S, GcPacer, pace_collector


class Node:
    """A tracked object that can be made part of a cycle."""

    other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen, as a process does."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def frozen(item: object) -> bool:
    return not any(each is item for each in gc.get_objects())  # the permanent generation is not listed


def test_a_pass_collects_cycles_then_freezes_what_survived() -> None:
    garbage = Node()
    garbage.other = garbage
    gone = weakref.ref(garbage)
    del garbage
    survivor = Node()
    GcPacer.step()
    assert gone() is None
    assert frozen(survivor) and gc.get_freeze_count() > 0


async def test_passes_run_on_the_loop_until_stopped() -> None:
    pacer = GcPacer(period_s=0.01)
    pacer.start()
    later = Node()
    assert not frozen(later)
    await asyncio.sleep(0.05)
    assert frozen(later)
    pacer.stop()
    after = Node()
    await asyncio.sleep(0.05)
    assert not frozen(after)


async def test_a_served_application_freezes_what_was_built_and_paces_while_it_runs() -> None:
    app = web.Application()
    built = Node()
    pace_collector(app)
    assert frozen(built)
    runner = web.AppRunner(app)
    await runner.setup()
    later = Node()
    await asyncio.sleep(PACE_S * 2)
    assert frozen(later)
    await runner.cleanup()
