"""Every message of PROTOCOL.md as a msgspec struct: the single description of the wire.

Inbound events are decoded straight from the Socket.IO packet's JSON text into
their struct (one pass, types and ranges checked on the way); ``data`` stays
raw JSON so that fields the server does not know reach dashboards byte for
byte. Outbound payloads are structs too, encoded once per message however many
sockets receive them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from .errors import ErrorCode, ProtocolError

# \Z, not $: Python's $ also matches before a trailing newline.
IMEI_PATTERN = r"^[0-9]{15}\Z"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z"

Imei = Annotated[str, Meta(pattern=IMEI_PATTERN, description="15 decimal digits")]
#: An imei that must already be registered. Only its length is checked while
#: decoding (a regex costs more than the rest of the decode): a malformed one
#: cannot be registered, and :func:`is_imei` names the error when the look-up misses.
RegisteredImei = Annotated[str, Meta(min_length=15, max_length=15, description="15 decimal digits")]
Email = Annotated[str, Meta(pattern=EMAIL_PATTERN, max_length=254)]
Millis = Annotated[int, Meta(ge=0, le=2**63 - 1, description="milliseconds since the epoch")]  # fits a store's int64
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]
EventName = Annotated[str, Meta(min_length=1, max_length=64)]

#: Names Socket.IO itself uses; a server-sent event must not take one of them.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


# --------------------------------------------------------------------------- client → server


class RegisterDevice(Struct, frozen=True):
    imei: Imei
    userEmail: Email | None = None

    def __post_init__(self) -> None:
        if self.userEmail is not None:
            msgspec.structs.force_setattr(self, "userEmail", self.userEmail.lower())


class TelemetryData(Struct, frozen=True, gc=False):
    imei: RegisteredImei
    data: Raw
    timestamp: Millis | None = None


class Heartbeat(Struct, frozen=True):
    imei: RegisteredImei


class SubscribeUser(Struct, frozen=True):
    email: Email

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "email", self.email.lower())


class UnsubscribeUser(SubscribeUser, frozen=True):
    pass


class Position(Struct, frozen=True):
    latitude: Latitude
    longitude: Longitude


#: The numeric fields of ``data`` that PROTOCOL.md names.
KNOWN_NUMERIC_FIELDS: tuple[str, ...] = (
    "engineRpm",
    "speed",
    "fuelLevel",
    "batteryVoltage",
    "crashDetection",
    "dtc",
)


def readings_type(extra_numeric_fields: tuple[str, ...] = ()) -> type[Struct]:
    """The struct that checks the known fields of ``data``.

    Alert rules may watch sensors PROTOCOL.md does not name; those fields
    become numeric fields of the deployment's readings, checked like the rest.
    Every numeric field comes first, in order, so that the alert evaluator can
    read them by position.
    """
    numeric = KNOWN_NUMERIC_FIELDS + tuple(f for f in extra_numeric_fields if f not in KNOWN_NUMERIC_FIELDS)
    fields: list[tuple[str, Any, Any]] = [(name, float | None, None) for name in numeric]
    fields.append(("position", Position | None, None))
    return msgspec.defstruct("Readings", fields, frozen=True, gc=False)


# The tagged union below decodes a whole Socket.IO EVENT array,
# ``["telemetry_data", {...}]``, in one pass: the tag is the array's first item.


class _Event(Struct, array_like=True, frozen=True, tag_field="event"):
    #: The event a reply goes out as when the client asked for no acknowledgement.
    reply_event: ClassVar[str | None]


class RegisterDeviceEvent(_Event, frozen=True, tag="register_device"):
    payload: RegisterDevice
    reply_event: ClassVar[str | None] = "device_registered"


class TelemetryDataEvent(_Event, frozen=True, tag="telemetry_data"):
    payload: TelemetryData
    reply_event: ClassVar[str | None] = "telemetry_processed"


class HeartbeatEvent(_Event, frozen=True, tag="heartbeat"):
    payload: Heartbeat
    reply_event: ClassVar[str | None] = None


class SubscribeUserEvent(_Event, frozen=True, tag="subscribe_user"):
    payload: SubscribeUser
    reply_event: ClassVar[str | None] = "user_subscribed"


class UnsubscribeUserEvent(_Event, frozen=True, tag="unsubscribe_user"):
    payload: UnsubscribeUser
    reply_event: ClassVar[str | None] = "user_unsubscribed"


InboundEvent = RegisterDeviceEvent | TelemetryDataEvent | HeartbeatEvent | SubscribeUserEvent | UnsubscribeUserEvent
EVENT_NAMES = frozenset(
    cls.__struct_config__.tag
    for cls in (RegisterDeviceEvent, TelemetryDataEvent, HeartbeatEvent, SubscribeUserEvent, UnsubscribeUserEvent)
)

_event_decoder = msgspec.json.Decoder(InboundEvent)
_parts_decoder = msgspec.json.Decoder(list[Raw])
_name_decoder = msgspec.json.Decoder(str)
_PATH = re.compile(r" - at `\$(?:\[1\])?\.?(?P<path>[^`]*)`$")


def decode_event(text: str | bytes) -> InboundEvent:
    """Decode one Socket.IO EVENT array into its typed event.

    Raises :class:`ProtocolError` with PROTOCOL.md's code: ``INVALID_IMEI`` and
    ``INVALID_EMAIL`` for those fields, ``INVALID_PAYLOAD`` for anything else.
    """
    try:
        return _event_decoder.decode(text)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise _explain(text, exc) from None


def event_name(text: str | bytes) -> str | None:
    """The event name of an EVENT array, or None when it has none."""
    try:
        parts = _parts_decoder.decode(text)
        return _name_decoder.decode(parts[0]) if parts else None
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def _explain(text: str | bytes, exc: Exception) -> ProtocolError:
    """Turn a failed decode into the error a client can act on."""
    if isinstance(exc, RecursionError):
        return ProtocolError(ErrorCode.INVALID_PAYLOAD, "payload is nested too deeply")
    if not isinstance(exc, msgspec.ValidationError) and isinstance(exc, msgspec.DecodeError):  # not JSON: NaN, a cut-off text
        return ProtocolError(ErrorCode.INVALID_PAYLOAD, f"the event is not valid JSON ({_without_position(str(exc))})")
    name = event_name(text)
    if name is None:
        return ProtocolError(ErrorCode.INVALID_PAYLOAD, "an event must be a JSON array starting with its name")
    if name not in EVENT_NAMES:
        return ProtocolError(ErrorCode.INVALID_PAYLOAD, f"unknown event {name[:64]!r}")
    return validation_error(str(exc))


def _without_position(reason: str) -> str:
    """msgspec's decode error, without the byte offset that means nothing to a client: "invalid character"."""
    return reason.removeprefix("JSON is malformed: ").split(" (byte")[0]


def validation_error(reason: str, within: str = "") -> ProtocolError:
    """The ProtocolError for msgspec's validation message about a payload.

    ``within`` names the field the decoded text sits in (``data`` for readings).
    """
    match = _PATH.search(reason)
    path = ".".join(part for part in (within, match["path"] if match else "") if part)
    detail = reason[: match.start()] if match else reason
    if path == "imei":
        return ProtocolError(ErrorCode.INVALID_IMEI, "imei must be a string of 15 digits")
    if path in ("email", "userEmail"):
        return ProtocolError(ErrorCode.INVALID_EMAIL, f"{path} is not a valid e-mail address")
    if detail.startswith("Expected `array`"):
        return ProtocolError(ErrorCode.INVALID_PAYLOAD, "the event needs one payload object")
    if detail.startswith("Expected `object`") and not path:
        return ProtocolError(ErrorCode.INVALID_PAYLOAD, "payload must be an object")
    return ProtocolError(ErrorCode.INVALID_PAYLOAD, f"{path}: {detail}" if path else detail)


def is_imei(text: str) -> bool:
    return len(text) == 15 and text.isascii() and text.isdigit()


# --------------------------------------------------------------------------- server → client


class Alert(Struct, frozen=True):
    level: Literal["info", "warning", "critical"]
    message: str
    code: str


class TelemetryUpdate(Struct, frozen=True, kw_only=True):
    type: str = "telemetry_update"
    imei: str
    timestamp: int
    data: Raw


class AlertEvent(Struct, frozen=True):
    type: str
    imei: str
    timestamp: int
    data: Raw
    alert: Alert


class DeviceStatus(Struct, frozen=True, kw_only=True):
    type: str = "device_status"
    imei: str
    status: Literal["online", "offline"]
    timestamp: int


class DeviceRegistered(Struct, frozen=True, kw_only=True):
    success: bool = True
    imei: str
    message: str = "Device registered successfully"


class TelemetryProcessed(Struct, frozen=True):
    success: bool = True
    message: str = "Telemetry processed successfully"


class LastTelemetry(Struct, frozen=True):
    imei: str
    timestamp: int
    data: Raw
    connected: bool


class UserSubscribed(Struct, frozen=True, kw_only=True):
    success: bool = True
    email: str
    deviceCount: int
    telemetries: list[LastTelemetry]


class UserUnsubscribed(Struct, frozen=True, kw_only=True):
    success: bool = True
    email: str


class HeartbeatAck(Struct, frozen=True, kw_only=True):
    success: bool = True
    imei: str
    timestamp: int


class Failure(Struct, frozen=True, kw_only=True):
    success: bool = False
    code: ErrorCode
    message: str

    @classmethod
    def of(cls, error: ProtocolError) -> Failure:
        return cls(code=error.code, message=error.message)


# --------------------------------------------------------------------------- REST


class DirectedMessage(Struct, frozen=True):
    """Body of the broadcast and directed-message endpoints."""

    event: EventName
    data: Raw | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.event in RESERVED_EVENTS:
            raise ValueError(f"{self.event!r} is reserved by Socket.IO")


class DeviceInfo(Struct, frozen=True):
    imei: str
    socketId: str
    connectedAt: int
    lastHeartbeat: int
    userEmail: str | None


class Connections(Struct, frozen=True):
    devices: list[DeviceInfo]
    users: list[str]
    totalConnections: int
    timestamp: int


class Delivery(Struct, frozen=True):
    event: str
    recipients: int


T = TypeVar("T")


class Envelope(Struct, Generic[T], frozen=True, omit_defaults=True):
    """Every REST answer that succeeds; ``Envelope[Connections]`` and the like describe each one in OpenAPI."""

    success: bool
    message: str
    data: T | UnsetType = UNSET


class ErrorEnvelope(Struct, frozen=True):
    """Every REST answer that fails, with the status of its code."""

    message: str
    code: ErrorCode
    success: Literal[False] = False


encode = msgspec.json.Encoder().encode
