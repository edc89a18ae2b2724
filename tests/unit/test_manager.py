"""The gateway's client manager: a socket's ids both ways, and one room however many sockets there are."""

from __future__ import annotations

import pytest
import socketio

from iothub.frontend.gateway import Manager


@pytest.fixture
def manager() -> Manager:
    manager = socketio.AsyncServer(client_manager=Manager()).manager
    manager.initialize()
    return manager


async def test_a_socket_is_found_by_either_id_until_it_disconnects(manager: Manager) -> None:
    sid = await manager.connect("eio-1", "/")
    assert manager.sid_from_eio_sid("eio-1", "/") == sid
    assert manager.eio_sid_from_sid(sid, "/") == "eio-1"
    assert manager.is_connected(sid, "/")
    await manager.disconnect(sid, "/")
    assert manager.sid_from_eio_sid("eio-1", "/") is None
    assert not manager.is_connected(sid, "/")


async def test_the_namespace_holds_one_room_however_many_sockets_connect(manager: Manager) -> None:
    """What keeps a disconnect from scanning one room per connected socket."""
    sids = [await manager.connect(f"eio-{index}", "/") for index in range(1000)]
    assert list(manager.rooms["/"]) == [None]
    assert len(manager.rooms["/"][None]) == 1000
    for sid in sids[:999]:
        await manager.disconnect(sid, "/")
    assert dict(manager.rooms["/"][None]) == {sids[999]: "eio-999"}


async def test_a_socket_cannot_join_another_room(manager: Manager) -> None:
    sid = await manager.connect("eio-1", "/")
    with pytest.raises(ValueError, match="no rooms"):
        await manager.enter_room(sid, "/", "owner@example.com")
    assert list(manager.rooms["/"]) == [None]
