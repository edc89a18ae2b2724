"""The WebSocket protocol (RFC 6455, with RFC 7692's permessage-deflate), server side, as plain objects.

No socket here: :func:`handshake` turns a request's headers into the 101
answer, :class:`FrameReader` turns the bytes a client sent into its messages,
and :func:`frame` and :class:`Deflater` turn a server's message into bytes.
The transport (:mod:`iothub.frontend.transport`) runs them on a connection of
its own, so that a WebSocket costs a few small objects and no task.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import struct
import zlib
from collections.abc import Mapping
from typing import NamedTuple

from ._mask import unmask

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Every deflated message ends with this empty block; it is left off on the wire (RFC 7692, 7.2.1).
_TAIL = b"\x00\x00\xff\xff"

FIN = 0x80
RSV1 = 0x40


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class Close(enum.IntEnum):
    """The close codes this server sends (RFC 6455, 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    TOO_BIG = 1009


class WebSocketError(Exception):
    """The client broke the protocol: the connection closes with ``code``."""

    def __init__(self, code: Close, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Message(NamedTuple):
    """A whole message or a control frame: TEXT data is ``str``, anything else ``bytes``."""

    opcode: Opcode
    data: str | bytes
    #: The payload's bytes, inflated: what the message carried, without decoding it again to count it.
    size: int


class Handshake(NamedTuple):
    """What :func:`handshake` agreed with the client."""

    #: The 101 response, ready to write.
    response: bytes
    #: Deflate settings when permessage-deflate was agreed, else None.
    deflate: DeflateParameters | None


class DeflateParameters(NamedTuple):
    #: The server starts every message with a fresh compressor.
    server_no_context_takeover: bool
    #: The client starts every message with a fresh compressor (so the server's inflater may too).
    client_no_context_takeover: bool
    #: log2 of the server's window (8 is sent as 9: zlib does not make raw 256-byte windows).
    server_max_window_bits: int


def handshake(headers: Mapping[str, str], *, compress: bool) -> Handshake:
    """The server's answer to an opening handshake, or :class:`ValueError` saying what is wrong with it.

    ``headers`` are the request's, names in lower case. permessage-deflate is
    agreed when ``compress`` is on and the client offers it with parameters
    this server can honour.
    """
    if "upgrade" not in (token.strip().lower() for token in headers.get("connection", "").split(",")):
        raise ValueError("a WebSocket handshake needs 'Connection: Upgrade'")
    if headers.get("upgrade", "").lower() != "websocket":
        raise ValueError("a WebSocket handshake needs 'Upgrade: websocket'")
    if headers.get("sec-websocket-version") != "13":
        raise ValueError("only WebSocket version 13 is spoken here")
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise ValueError("Sec-WebSocket-Key must be 16 bytes in base64") from None
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {accept_key(key)}"]
    deflate = _agree_deflate(headers.get("sec-websocket-extensions", "")) if compress else None
    if deflate is not None:
        lines.append("Sec-WebSocket-Extensions: " + _deflate_response(deflate))
    return Handshake(("\r\n".join(lines) + "\r\n\r\n").encode(), deflate)


def _agree_deflate(offers: str) -> DeflateParameters | None:
    """The first permessage-deflate offer this server can accept (RFC 7692, 7.1)."""
    for offer in offers.split(","):
        name, *parameters = (part.strip() for part in offer.split(";"))
        if name.lower() != "permessage-deflate":
            continue
        agreed: dict[str, str | None] = {}
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key in agreed:
                break
            agreed[key] = value or None
        else:
            bits = agreed.pop("server_max_window_bits", "15")
            agreed.pop("client_max_window_bits", None)  # a limit on the client's window: any inflater reads it
            no_takeover = {key: agreed.pop(key, "") is None for key in ("server_no_context_takeover", "client_no_context_takeover")}
            if agreed or bits is None or not bits.isdigit() or not 8 <= int(bits) <= 15:
                continue
            return DeflateParameters(no_takeover["server_no_context_takeover"], no_takeover["client_no_context_takeover"], max(9, int(bits)))
    return None


def _deflate_response(parameters: DeflateParameters) -> str:
    response = ["permessage-deflate"]
    if parameters.server_no_context_takeover:
        response.append("server_no_context_takeover")
    if parameters.client_no_context_takeover:
        response.append("client_no_context_takeover")
    if parameters.server_max_window_bits != 15:
        response.append(f"server_max_window_bits={parameters.server_max_window_bits}")
    return "; ".join(response)


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def frame(payload: bytes, opcode: int = Opcode.TEXT, *, rsv: int = 0) -> bytes:
    """A server-to-client frame: final, unmasked."""
    first = FIN | rsv | opcode
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(struct.pack("!H", code) + reason.encode()[:120], Opcode.CLOSE)


class Deflater:
    """The server's permessage-deflate compressor."""

    __slots__ = ("_parameters", "_compressor")

    def __init__(self, parameters: DeflateParameters) -> None:
        self._parameters = parameters
        self._compressor = self._fresh()

    def _fresh(self) -> zlib._Compress:
        return zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self._parameters.server_max_window_bits)

    def frame(self, payload: bytes, opcode: int) -> bytes:
        if self._parameters.server_no_context_takeover:
            self._compressor = self._fresh()
        deflated = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        return frame(deflated[:-4] if deflated.endswith(_TAIL) else deflated, opcode, rsv=RSV1)


class FrameReader:
    """A client's frames in, its messages out: reassembled, unmasked, inflated and decoded.

    Holds at most one unfinished frame, and one unfinished message of at most
    ``max_message_bytes``: a frame or message announcing more is refused as
    soon as its header is read.
    """

    __slots__ = ("max_message_bytes", "_buffer", "_fragments", "_fragments_size", "_fragmented", "_compressed", "_inflater", "_fresh_inflater")

    def __init__(self, max_message_bytes: int, deflate: DeflateParameters | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        #: The start of a frame whose end has not arrived yet.
        self._buffer = bytearray()
        #: An unfinished message: its opcode, and its frames' payloads so far (a list only once there are some).
        self._fragmented: Opcode | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._compressed = False
        self._inflater = zlib.decompressobj(-15) if deflate is not None else None
        self._fresh_inflater = deflate is not None and deflate.client_no_context_takeover

    def feed(self, data: bytes) -> list[Message]:
        """The messages ``data`` completes, in order; :class:`WebSocketError` when the client broke the protocol."""
        buffer: bytes | bytearray = data
        if self._buffer:  # a frame's start is waiting: added to in place, so a large frame is not copied at every read
            self._buffer += data
            buffer = self._buffer
        messages: list[Message] = []
        position, end = 0, len(buffer)
        while end - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - position < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, position + 2)
                header = 4
            elif length == 127:
                if end - position < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, position + 2)
                header = 10
            if not second & 0x80:
                raise WebSocketError(Close.PROTOCOL_ERROR, "a client's frames must be masked")
            if length > self.max_message_bytes:
                raise self._too_big()
            start = position + header + 4
            if end - start < length:
                break
            payload = unmask(buffer, start - 4, length)
            position = start + length
            if first == FIN | Opcode.TEXT and self._fragmented is None:  # the usual: a whole text message, uncompressed
                messages.append(self._whole(Opcode.TEXT, payload))
                continue
            message = self._frame(first, payload)
            if message is not None:
                messages.append(message)
        if position == end:
            self._buffer = bytearray()
        elif buffer is self._buffer:
            del self._buffer[:position]
        else:
            self._buffer = bytearray(buffer[position:])
        return messages

    def _frame(self, first: int, payload: bytes) -> Message | None:
        opcode, final, rsv = first & 0x0F, first & FIN, first & 0x70
        if opcode >= Opcode.CLOSE:  # a control frame: whole, short, and allowed between a message's frames
            if not final or len(payload) > 125 or rsv or opcode > Opcode.PONG:
                raise WebSocketError(Close.PROTOCOL_ERROR, "a malformed control frame")
            return Message(Opcode(opcode), payload, len(payload))
        if rsv & ~RSV1 or (rsv and (self._inflater is None or opcode == Opcode.CONTINUATION)):
            raise WebSocketError(Close.PROTOCOL_ERROR, "reserved bits set that no extension agreed")
        if opcode == Opcode.CONTINUATION:
            if self._fragmented is None:
                raise WebSocketError(Close.PROTOCOL_ERROR, "a continuation frame with no message to continue")
        elif opcode in (Opcode.TEXT, Opcode.BINARY):
            if self._fragmented is not None:
                raise WebSocketError(Close.PROTOCOL_ERROR, "a new message before the last one ended")
            self._fragmented, self._compressed = Opcode(opcode), bool(rsv)
        else:
            raise WebSocketError(Close.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        self._fragments_size += len(payload)
        if self._fragments_size > self.max_message_bytes:
            raise self._too_big()
        if not final:
            if self._fragments is None:
                self._fragments = []
            self._fragments.append(payload)
            return None
        data = b"".join((*self._fragments, payload)) if self._fragments else payload
        kind = self._fragmented
        assert kind is not None
        self._fragmented, self._fragments, self._fragments_size = None, None, 0
        return self._whole(kind, self._inflate(data) if self._compressed else data)

    def _whole(self, kind: Opcode, data: bytes) -> Message:
        """A message complete: TEXT decoded."""
        if kind is Opcode.BINARY:
            return Message(kind, data, len(data))
        try:
            return Message(kind, data.decode(), len(data))
        except UnicodeDecodeError:
            raise WebSocketError(Close.INVALID_DATA, "a text message that is not UTF-8") from None

    def _too_big(self) -> WebSocketError:
        return WebSocketError(Close.TOO_BIG, f"a message may carry at most {self.max_message_bytes} bytes")

    def _inflate(self, data: bytes) -> bytes:
        assert self._inflater is not None
        if self._fresh_inflater:
            self._inflater = zlib.decompressobj(-15)
        try:
            inflated = self._inflater.decompress(data + _TAIL, self.max_message_bytes + 1)
        except zlib.error:
            raise WebSocketError(Close.INVALID_DATA, "a compressed message that does not inflate") from None
        if len(inflated) > self.max_message_bytes or self._inflater.unconsumed_tail:
            raise self._too_big()
        return inflated
