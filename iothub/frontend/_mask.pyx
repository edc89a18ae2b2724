"""A client's WebSocket payload unmasked, compiled: read in place, eight bytes at a time, in one pass.

Pure Python needs about 6 ns a byte (60 ms for a 10 MiB message, the loop
stalled all the while), and a slice for the key and one for the payload first.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy


def unmask(object frames, Py_ssize_t at, Py_ssize_t length) -> bytes:
    """The ``length`` bytes after the 4-byte masking key at ``frames[at]``, XOR the key repeated (RFC 6455, 5.3).

    ``frames`` is the bytes or bytearray read from the socket: nothing is sliced out of it first.
    """
    cdef const char* source
    cdef Py_ssize_t words = length >> 3
    cdef Py_ssize_t i
    cdef uint32_t key32
    cdef uint64_t key64, word
    if type(frames) is bytes:
        source = PyBytes_AS_STRING(frames)
    elif type(frames) is bytearray:
        source = PyByteArray_AS_STRING(frames)
    else:
        raise TypeError("frames must be bytes or a bytearray")
    if at < 0 or length < 0 or at + 4 + length > len(frames):
        raise ValueError("the payload runs past the frames")
    cdef const unsigned char* key = <const unsigned char*>source + at
    source += at + 4
    unmasked = PyBytes_FromStringAndSize(NULL, length)
    cdef char* target = PyBytes_AS_STRING(unmasked)
    memcpy(&key32, key, 4)
    key64 = (<uint64_t>key32 << 32) | key32
    for i in range(words):
        memcpy(&word, source + i * 8, 8)
        word ^= key64
        memcpy(target + i * 8, &word, 8)
    for i in range(words * 8, length):
        target[i] = source[i] ^ key[i & 3]
    return unmasked
