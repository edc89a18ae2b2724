"""Types of the compiled unmasking (``_mask.pyx``), for mypy and readers."""

def unmask(frames: bytes | bytearray, at: int, length: int) -> bytes:
    """The ``length`` bytes after the 4-byte masking key at ``frames[at]``, XOR the key repeated (RFC 6455, 5.3)."""
