"""Socket.IO packets as this server reads and writes them.

Incoming EVENT packets keep their JSON text, so the gateway decodes it once,
straight into the event's struct; the plain ones skip python-socketio's
generic packet parser altogether (:func:`split_event`). Outgoing events and
acknowledgements are built as text around an already-encoded payload, once
per message however many sockets it goes to.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from socketio import packet

_encode_str = msgspec.json.Encoder().encode

#: Clients number their acknowledgements from 0 up; an id longer than this is a malformed packet.
MAX_ACK_ID_DIGITS = 10
#: An EVENT array's name, read from its first characters only: a refused event is not decoded to be counted.
_EVENT_NAME = re.compile(r'\[\s*"([A-Za-z_]{1,64})"\s*[,\]]')


def _verbatim(text: str) -> str:
    return text


class _KeepText:
    """The ``json`` of :class:`EventPacket`: decoding leaves the text as it is."""

    dumps = staticmethod(json.dumps)
    loads = staticmethod(_verbatim)


class EventPacket(packet.Packet):
    """A Socket.IO packet whose EVENT payload stays JSON text until the gateway decodes it."""

    json = _KeepText
    data: Any

    def decode(self, encoded_packet: str | bytes) -> int:
        attachments = super().decode(encoded_packet)
        if self.packet_type != packet.EVENT and isinstance(self.data, str):
            self.data = json.loads(self.data)
        return attachments


def split_event(text: str) -> tuple[int | None, str] | None:
    """An EVENT packet on the default namespace as ``(ack id or None, JSON text)``; None for any other packet.

    ``2["telemetry_data",{…}]`` and ``217["telemetry_data",{…}]``: what almost
    every packet is, read without python-socketio's generic parser.
    """
    if text[:1] != "2" or text[1:2] == "/":
        return None
    start = 1
    while text[start : start + 1].isdigit():
        start += 1
    if start > MAX_ACK_ID_DIGITS + 1:
        raise ValueError(f"an acknowledgement id of more than {MAX_ACK_ID_DIGITS} digits")
    return (int(text[1:start]) if start > 1 else None), text[start:]


def event_text(event: str, payload: bytes | None) -> str:
    """The text of an EVENT packet on the default namespace: ``2["event",payload]``."""
    name = _encode_str(event)
    if payload is None:
        return f"2[{name.decode()}]"
    return "2[" + name.decode() + "," + payload.decode() + "]"


def ack_text(ack_id: int, payload: bytes) -> str:
    """The text of an ACK packet on the default namespace: ``3<id>[payload]``."""
    return f"3{ack_id}[" + payload.decode() + "]"


def event_name_of(data: Any) -> str | None:
    """The event name an EVENT's text starts with, if it is a plain one; None otherwise (for counting, not for dispatch)."""
    if not isinstance(data, str):
        return None
    match = _EVENT_NAME.match(data, 0, 80)
    return match[1] if match else None
