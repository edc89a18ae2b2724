"""A client's WebSocket payload unmasked, compiled: eight bytes at a time, in one pass.

Pure Python needs about 6 ns a byte (60 ms for a 10 MiB message, the loop
stalled all the while).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy


def unmask(bytes mask, bytes payload) -> bytes:
    """``payload`` XOR the 4-byte masking key ``mask``, repeated (RFC 6455, 5.3)."""
    cdef Py_ssize_t length = len(payload)
    cdef Py_ssize_t words = length >> 3
    cdef Py_ssize_t i
    cdef uint32_t key32
    cdef uint64_t key64, word
    if len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    unmasked = PyBytes_FromStringAndSize(NULL, length)
    cdef char* target = PyBytes_AS_STRING(unmasked)
    cdef const char* source = payload
    cdef const unsigned char* key = mask
    memcpy(&key32, key, 4)
    key64 = (<uint64_t>key32 << 32) | key32
    for i in range(words):
        memcpy(&word, source + i * 8, 8)
        word ^= key64
        memcpy(target + i * 8, &word, 8)
    for i in range(words * 8, length):
        target[i] = source[i] ^ key[i & 3]
    return unmasked
