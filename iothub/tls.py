"""TLS on the server's one port: IOTHUB_TLS_CERT and IOTHUB_TLS_KEY as the ``ssl.SSLContext`` aiohttp serves with.

Built before anything listens, so that a file the server cannot read, a key
that is not the certificate's or an encrypted key stops the start with a
:class:`ConfigError` naming the setting, not with a traceback from inside
the event loop (or, for an encrypted key, OpenSSL asking for a passphrase on
a terminal that a service does not have).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .config import ConfigError, Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """None without TLS; else a context with Python's defaults for a server (TLS 1.2 or newer) holding the PEM chain and key."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None or key is None:  # both or neither: Settings.load saw to it
        return None
    for variable, path in (("IOTHUB_TLS_CERT", cert), ("IOTHUB_TLS_KEY", key)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"IOTHUB_TLS_KEY ({key}) is not the private key of IOTHUB_TLS_CERT ({cert})") from None
        raise ConfigError(
            f"IOTHUB_TLS_CERT ({cert}) and IOTHUB_TLS_KEY ({key}) must be a PEM certificate chain and its PEM private key "
            f"({exc.reason or exc.library or 'not PEM'})"
        ) from None
    return context


def _no_passphrase() -> bytes:
    """Called by OpenSSL only for an encrypted key: refuse, rather than prompt on a terminal."""
    raise ConfigError("IOTHUB_TLS_KEY is encrypted; the server needs it unencrypted (readable by the server's user only)")
