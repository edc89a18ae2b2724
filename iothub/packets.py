"""Socket.IO packets as this server reads and writes them.

Incoming EVENT packets keep their JSON text, so the gateway decodes it once,
with msgspec, straight into the event's struct. Outgoing events and
acknowledgements are built as text around an already-encoded payload, once
per message however many sockets it goes to.
"""

from __future__ import annotations

import json

import msgspec
from socketio import packet

_encode_str = msgspec.json.Encoder().encode


def _verbatim(text: str) -> str:
    return text


class _KeepText:
    """The ``json`` of :class:`EventPacket`: decoding leaves the text as it is."""

    dumps = staticmethod(json.dumps)
    loads = staticmethod(_verbatim)


class EventPacket(packet.Packet):
    """A Socket.IO packet whose EVENT payload stays JSON text until the gateway decodes it."""

    json = _KeepText

    def decode(self, encoded_packet: str | bytes) -> int:
        attachments = super().decode(encoded_packet)
        if self.packet_type != packet.EVENT and isinstance(self.data, str):
            self.data = json.loads(self.data)
        return attachments


def event_text(event: str, payload: bytes | None) -> str:
    """The text of an EVENT packet on the default namespace: ``2["event",payload]``."""
    name = _encode_str(event)
    if payload is None:
        return f"2[{name.decode()}]"
    return "2[" + name.decode() + "," + payload.decode() + "]"


def ack_text(ack_id: int, payload: bytes) -> str:
    """The text of an ACK packet on the default namespace: ``3<id>[payload]``."""
    return f"3{ack_id}[" + payload.decode() + "]"
