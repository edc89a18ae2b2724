"""Socket.IO packets as the gateway splits and builds them, against python-socketio's own parser."""

from __future__ import annotations

import msgspec
import pytest
from socketio import packet

from iothub.frontend.packets import EventPacket, ack_text, event_name_of, event_text, split_event

TELEMETRY = '["telemetry_data",{"imei":"123456789012345","data":{"speed":65}}]'


@pytest.mark.parametrize("ack_id", [None, 0, 7, 17, 123456789])
def test_an_event_splits_as_python_socketio_parses_it(ack_id: int | None) -> None:
    text = "2" + ("" if ack_id is None else str(ack_id)) + TELEMETRY
    parsed = EventPacket(encoded_packet=text)
    assert parsed.packet_type == packet.EVENT and parsed.namespace is None
    assert split_event(text) == (parsed.id, parsed.data) == (ack_id, TELEMETRY)


@pytest.mark.parametrize(
    "text",
    [
        "0",  # CONNECT
        '0{"token":"x"}',
        "1",  # DISCONNECT
        "3" + "17" + "[{}]",  # ACK
        "51-" + '["e",{"_placeholder":true,"num":0}]',  # BINARY_EVENT
        "2/admin," + TELEMETRY,  # another namespace
        "2/admin,17" + TELEMETRY,
        "",
    ],
)
def test_anything_but_a_default_namespace_event_is_left_to_python_socketio(text: str) -> None:
    assert split_event(text) is None


def test_a_malformed_event_body_is_still_handed_over_for_the_gateway_to_refuse() -> None:
    """The gateway answers INVALID_PAYLOAD for these; splitting must not swallow them."""
    assert split_event("2") == (None, "")
    assert split_event("2abc") == (None, "abc")
    assert split_event("2 1[]") == (None, " 1[]")


def test_replies_are_packets_python_socketio_reads_back() -> None:
    payload = msgspec.json.encode({"success": True})
    event = EventPacket(encoded_packet=event_text("telemetry_processed", payload))
    assert (event.packet_type, event.data) == (packet.EVENT, '["telemetry_processed",{"success":true}]')
    ack = EventPacket(encoded_packet=ack_text(17, payload))
    assert (ack.packet_type, ack.id, ack.data) == (packet.ACK, 17, [{"success": True}])
    assert EventPacket(encoded_packet=event_text("ping_all", None)).data == '["ping_all"]'


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (TELEMETRY, "telemetry_data"),
        ('[ "heartbeat" , {"imei":"1"}]', "heartbeat"),
        ('["no_payload"]', "no_payload"),
        ('["tele\\u006detry_data",{}]', None),  # an escaped name: counted as other, decoded properly later
        ('{"event":"x"}', None),
        ('["' + "x" * 100 + '",{}]', None),
        ("", None),
        (["telemetry_data", b"binary"], None),
    ],
)
def test_event_name_of_reads_only_the_start(text: object, name: str | None) -> None:
    assert event_name_of(text) == name

