"""RFC 6455 and RFC 7692, server side, as plain objects: the handshake, the client's frames, the server's."""

from __future__ import annotations

import struct
import zlib

import pytest

from iothub.frontend._mask import unmask
from iothub.frontend.websocket import (
    Close,
    DeflateParameters,
    Deflater,
    FrameReader,
    Message,
    Opcode,
    WebSocketError,
    accept_key,
    frame,
    handshake,
)

from ..support.raw import masked_frame

HANDSHAKE = {
    "connection": "keep-alive, Upgrade",
    "upgrade": "WebSocket",
    "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_the_accept_key_is_the_rfcs_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    answer = handshake(HANDSHAKE, compress=False)
    assert answer.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer.response
    assert answer.response.endswith(b"\r\n\r\n") and answer.deflate is None


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"connection": "keep-alive"}, "Connection"),
        ({"upgrade": "h2c"}, "Upgrade"),
        ({"sec-websocket-version": "8"}, "version"),
        ({"sec-websocket-key": "short"}, "16 bytes"),
        ({"sec-websocket-key": "!!!!!!!!!!!!!!!!!!!!!!!!"}, "16 bytes"),
    ],
)
def test_a_malformed_handshake_says_what_is_wrong(change: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        handshake({**HANDSHAKE, **change}, compress=False)


def test_deflate_is_agreed_only_when_on_and_offered_with_parameters_it_can_honour() -> None:
    offer = {**HANDSHAKE, "sec-websocket-extensions": "permessage-deflate; client_max_window_bits"}
    assert handshake(offer, compress=False).deflate is None
    assert handshake(HANDSHAKE, compress=True).deflate is None
    agreed = handshake(offer, compress=True)
    assert agreed.deflate == DeflateParameters(False, False, 15)
    assert b"Sec-WebSocket-Extensions: permessage-deflate\r\n" in agreed.response
    offer = {**HANDSHAKE, "sec-websocket-extensions": "permessage-deflate; server_max_window_bits=10; server_no_context_takeover"}
    narrow = handshake(offer, compress=True)
    assert narrow.deflate == DeflateParameters(True, False, 10)
    assert b"server_no_context_takeover; server_max_window_bits=10" in narrow.response
    for unusable in ("permessage-deflate; server_max_window_bits=20", "permessage-deflate; x_unknown", "x-webkit-deflate-frame"):
        assert handshake({**HANDSHAKE, "sec-websocket-extensions": unusable}, compress=True).deflate is None
    fallback = handshake({**HANDSHAKE, "sec-websocket-extensions": "permessage-deflate; x_unknown, permessage-deflate"}, compress=True)
    assert fallback.deflate == DeflateParameters(False, False, 15)


def test_messages_come_whole_however_the_bytes_are_split() -> None:
    stream = masked_frame(b"42hello") + masked_frame("é".encode() * 200) + masked_frame(b"\x00\x01", Opcode.BINARY) + masked_frame(b"x" * 70000)
    expected = [
        Message(Opcode.TEXT, "42hello", 7),
        Message(Opcode.TEXT, "é" * 200, 400),  # the size counts bytes, not characters
        Message(Opcode.BINARY, b"\x00\x01", 2),
        Message(Opcode.TEXT, "x" * 70000, 70000),
    ]
    for step in (1, 3, 7, 500, len(stream)):
        reader = FrameReader(100_000)
        messages = []
        for start in range(0, len(stream), step):
            messages += reader.feed(stream[start : start + step])
        assert messages == expected


def test_a_fragmented_message_is_joined_and_a_control_frame_may_come_between() -> None:
    reader = FrameReader(1000)
    stream = masked_frame(b"4", final=False) + masked_frame(b"", Opcode.PING) + masked_frame(b"2h", Opcode.CONTINUATION, final=False)
    assert reader.feed(stream) == [Message(Opcode.PING, b"", 0)]
    assert reader.feed(masked_frame(b"i", Opcode.CONTINUATION)) == [Message(Opcode.TEXT, "42hi", 4)]


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (frame(b"unmasked"), Close.PROTOCOL_ERROR),
        (masked_frame(b"x" * 1001), Close.TOO_BIG),
        (masked_frame(b"x" * 600, final=False) + masked_frame(b"x" * 600, Opcode.CONTINUATION), Close.TOO_BIG),
        (masked_frame(b"\xff\xfe"), Close.INVALID_DATA),
        (masked_frame(b"x", Opcode.CONTINUATION), Close.PROTOCOL_ERROR),
        (masked_frame(b"a", final=False) + masked_frame(b"b"), Close.PROTOCOL_ERROR),
        (masked_frame(b"", Opcode.PING, final=False), Close.PROTOCOL_ERROR),
        (masked_frame(b"p" * 126, Opcode.PING), Close.PROTOCOL_ERROR),
        (masked_frame(b"x", 0x3), Close.PROTOCOL_ERROR),
        (masked_frame(b"x", rsv=0x40), Close.PROTOCOL_ERROR),
    ],
)
def test_a_client_that_breaks_the_protocol_is_refused_with_its_close_code(stream: bytes, code: Close) -> None:
    with pytest.raises(WebSocketError) as refused:
        FrameReader(1000).feed(stream)
    assert refused.value.code == code


def test_a_frame_too_large_is_refused_from_its_header_before_its_payload_arrives() -> None:
    with pytest.raises(WebSocketError) as refused:
        FrameReader(1000).feed(struct.pack("!BBQ", 0x81, 0x80 | 127, 2**40))
    assert refused.value.code == Close.TOO_BIG


def deflated(text: bytes, compressor: zlib._Compress) -> bytes:
    data = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def test_compressed_messages_inflate_with_the_context_carried_over() -> None:
    reader = FrameReader(10_000, DeflateParameters(False, False, 15))
    client = zlib.compressobj(wbits=-15)
    first, second = b'42["telemetry_data",{"imei":"1"}]', b'42["telemetry_data",{"imei":"2"}]'
    stream = masked_frame(deflated(first, client), rsv=0x40) + masked_frame(deflated(second, client), rsv=0x40) + masked_frame(b"3")
    inflated = [Message(Opcode.TEXT, first.decode(), len(first)), Message(Opcode.TEXT, second.decode(), len(second))]
    assert reader.feed(stream) == [*inflated, Message(Opcode.TEXT, "3", 1)]  # sizes inflated, not as on the wire


def test_a_compressed_message_that_inflates_past_the_limit_is_refused() -> None:
    reader = FrameReader(10_000, DeflateParameters(False, False, 15))
    bomb = deflated(b"x" * 1_000_000, zlib.compressobj(wbits=-15))
    assert len(bomb) < 10_000
    with pytest.raises(WebSocketError) as refused:
        reader.feed(masked_frame(bomb, rsv=0x40))
    assert refused.value.code == Close.TOO_BIG


def test_the_servers_compressed_frames_inflate_for_a_client() -> None:
    for parameters in (DeflateParameters(False, False, 15), DeflateParameters(True, False, 9)):
        deflater, client = Deflater(parameters), zlib.decompressobj(-15)
        for text in (b"4" + b"a" * 300, b"4" + b"a" * 300, b"2"):
            wire = deflater.frame(text, Opcode.TEXT)
            assert wire[0] == 0x80 | 0x40 | Opcode.TEXT
            length = wire[1]
            payload = wire[2:] if length < 126 else wire[4:]
            assert client.decompress(payload + b"\x00\x00\xff\xff") == text


def test_server_frames_have_the_right_length_forms() -> None:
    assert frame(b"x" * 125)[:2] == bytes((0x81, 125))
    assert frame(b"x" * 126)[:4] == bytes((0x81, 126, 0, 126))
    assert frame(b"x" * 65536, Opcode.BINARY)[:10] == bytes((0x82, 127)) + (65536).to_bytes(8, "big")


def test_the_compiled_unmasking_is_the_rfcs_xor_at_every_length_and_place() -> None:
    mask = bytes((0x37, 0xFA, 0x21, 0x3D))
    payload = bytes(range(256)) * 41
    for length in (*range(20), 1000, 10_001):
        for before in (b"", b"x", b"head"):
            frames = before + mask + payload[:length] + b"next frame"
            expected = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload[:length]))
            assert unmask(frames, len(before), length) == expected
            assert unmask(bytearray(frames), len(before), length) == expected
    with pytest.raises(ValueError, match="runs past"):
        unmask(mask + b"abc", 0, 4)
    with pytest.raises(TypeError):
        unmask(memoryview(mask + b"abc"), 0, 3)  # type: ignore[arg-type]


def test_a_large_message_read_in_small_pieces_comes_whole() -> None:
    payload = bytes(range(256)) * 40_000  # 10 MB, in 64 KiB reads as a socket delivers it
    stream = masked_frame(payload, opcode=Opcode.BINARY)
    reader = FrameReader(len(payload))
    messages = [message for start in range(0, len(stream), 65536) for message in reader.feed(stream[start : start + 65536])]
    assert messages == [Message(Opcode.BINARY, payload, len(payload))]
