"""Types of the compiled unmasking (``_mask.pyx``), for mypy and readers."""

def unmask(mask: bytes, payload: bytes) -> bytes:
    """``payload`` XOR the 4-byte masking key ``mask``, repeated (RFC 6455, 5.3)."""
