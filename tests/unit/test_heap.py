"""The paced collector: a full collection frees cyclic garbage and freezes what survived it; Python's pacing comes back at stop."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from aiohttp import web

from iothub.heap import FULL_EVERY, Pacing, pace_collector


class Node:
    """A tracked object that can be made part of a cycle."""

    other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen and Python's thresholds, as a process does."""
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def frozen(item: object) -> bool:
    return not any(each is item for each in gc.get_objects())  # the permanent generation is not listed


def cycle() -> weakref.ref[Node]:
    """A cycle nothing else refers to: garbage only the collector can free."""
    node = Node()
    node.other = node
    return weakref.ref(node)


def test_what_exists_at_start_is_frozen_and_garbage_is_not() -> None:
    built = Node()
    gone = cycle()
    pacing = Pacing()
    pacing.start()
    try:
        assert frozen(built) and gone() is None
        assert gc.get_threshold()[2] == FULL_EVERY
    finally:
        pacing.stop()


def test_a_full_collection_frees_cycles_then_freezes_the_survivors() -> None:
    pacing = Pacing()
    pacing.start()
    try:
        later, gone = Node(), cycle()
        assert not frozen(later)
        gc.collect()
        assert frozen(later) and gone() is None
        young = Node()
        gc.collect(1)  # a young collection freezes nothing
        assert not frozen(young)
    finally:
        pacing.stop()


def test_stopping_gives_back_pythons_own_pacing() -> None:
    thresholds = gc.get_threshold()
    pacing = Pacing()
    pacing.start()
    pacing.stop()
    assert gc.get_threshold() == thresholds
    after = Node()
    gc.collect()
    assert not frozen(after)


async def test_a_served_application_is_paced_from_startup_to_cleanup() -> None:
    thresholds = gc.get_threshold()
    app = web.Application()
    pace_collector(app)
    built = Node()
    runner = web.AppRunner(app)
    await runner.setup()
    assert frozen(built) and gc.get_threshold()[2] == FULL_EVERY
    await runner.cleanup()
    assert gc.get_threshold() == thresholds
