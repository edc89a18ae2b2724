# cython: freethreading_compatible = False
"""The compiled hot path: where a telemetry message is read and its alerts decided, in C.

``CompiledEvaluator`` is the rule check: the rules flattened into C arrays,
one pass over a message's readings, no Python objects made unless a rule
fires. Same meaning as ``iothub.rules.evaluate_reference``.

``TelemetryReader`` reads a whole ``telemetry_data`` event in one pass over
its JSON text: it checks the syntax, takes ``imei``, ``timestamp`` and the
span of ``data``, reads the numeric fields the rules watch and checks
``position``, then runs the evaluator. It takes only the plain case: a text
it cannot vouch for (any error, an escape in a key, a repeated key, deep
nesting, a number out of range, …) gets ``None``, and msgspec's decoders then
produce the message or the exact error. Whatever it does take, it reads as
those decoders would (``tests/test_telemetry_reader.py`` holds it to that).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_DecodeASCII
from libc.math cimport isinf
from libc.string cimport memcmp

cdef extern from "Python.h":
    ctypedef struct PyObject
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    double PyOS_string_to_double(const char* text, char** end, PyObject* overflow) except? -1.0

cdef enum Op:
    GT = 0
    GE = 1
    LT = 2
    LE = 3
    EQ = 4
    NE = 5

cdef tuple NONE_FIRED = ()
#: Deeper values than this are left to msgspec.
cdef int MAX_DEPTH = 64
cdef long long MAX_MILLIS = 9223372036854775807


cdef class CompiledEvaluator:
    """Evaluates flattened rules against a message's readings.

    ``slots[i]``, ``ops[i]`` (an index into ``iothub.rules.OPERATORS``) and
    ``thresholds[i]`` describe rule ``i``. Calling it with a readings tuple
    returns the indices of the rules that fire, as a tuple.
    """

    cdef Py_ssize_t count
    cdef Py_ssize_t width
    cdef Py_ssize_t *slots
    cdef int *ops
    cdef double *thresholds

    def __cinit__(self, slots, ops, thresholds):
        cdef Py_ssize_t i
        self.count = len(slots)
        if len(ops) != self.count or len(thresholds) != self.count:
            raise ValueError("slots, ops and thresholds must have one entry per rule")
        self.slots = <Py_ssize_t *> PyMem_Malloc(max(self.count, 1) * sizeof(Py_ssize_t))
        self.ops = <int *> PyMem_Malloc(max(self.count, 1) * sizeof(int))
        self.thresholds = <double *> PyMem_Malloc(max(self.count, 1) * sizeof(double))
        if not self.slots or not self.ops or not self.thresholds:
            raise MemoryError()
        self.width = 0
        for i in range(self.count):
            if slots[i] < 0 or not 0 <= ops[i] <= 5:
                raise ValueError(f"rule {i}: bad slot or operator")
            self.slots[i] = slots[i]
            self.ops[i] = ops[i]
            self.thresholds[i] = thresholds[i]
            self.width = max(self.width, slots[i] + 1)

    def __dealloc__(self):
        PyMem_Free(self.slots)
        PyMem_Free(self.ops)
        PyMem_Free(self.thresholds)

    def __call__(self, tuple values not None):
        cdef Py_ssize_t i
        cdef object value
        cdef double x
        cdef list hits = None
        if PyTuple_GET_SIZE(values) < self.width:
            raise ValueError("readings tuple is shorter than the rules need")
        for i in range(self.count):
            value = <object> PyTuple_GET_ITEM(values, self.slots[i])
            if value is None:
                continue
            x = PyFloat_AS_DOUBLE(value) if PyFloat_CheckExact(value) else float(value)
            if fires(self.ops[i], x, self.thresholds[i]):
                if hits is None:
                    hits = []
                hits.append(i)
        return NONE_FIRED if hits is None else tuple(hits)

    cdef tuple fired(self, const double *values, const bint *present):
        """The rules that fire for C arrays of readings, indexed by slot."""
        cdef Py_ssize_t i, slot
        cdef list hits = None
        for i in range(self.count):
            slot = self.slots[i]
            if present[slot] and fires(self.ops[i], values[slot], self.thresholds[i]):
                if hits is None:
                    hits = []
                hits.append(i)
        return NONE_FIRED if hits is None else tuple(hits)


cdef inline bint fires(int op, double x, double t) noexcept nogil:
    if op == GT:
        return x > t
    if op == GE:
        return x >= t
    if op == LT:
        return x < t
    if op == LE:
        return x <= t
    if op == EQ:
        return x == t
    return x != t


# --------------------------------------------------------------------------- the JSON subset
# Each scanner takes a pointer to the first byte of a value and the end of the
# text; it returns the pointer just past the value, or NULL when the text is
# not valid JSON there or is not the plain case.

ctypedef const unsigned char *Text


cdef inline Text skip_space(Text p, Text end) noexcept nogil:
    while p < end and p[0] <= b' ' and (p[0] == b' ' or p[0] == b'\n' or p[0] == b'\r' or p[0] == b'\t'):
        p += 1
    return p


cdef inline bint is_hex(unsigned char c) noexcept nogil:
    return (b'0' <= c <= b'9') or (b'a' <= c <= b'f') or (b'A' <= c <= b'F')


#: Bytes a string cannot simply pass over: its end, an escape, a control character.
cdef unsigned char STRING_STOP[256]
for _byte in range(256):
    STRING_STOP[_byte] = _byte < 0x20 or _byte == 0x22 or _byte == 0x5C


cdef Text skip_string(Text p, Text end, bint *escaped) noexcept nogil:
    """A string at ``p`` (its opening quote). Escaped surrogates are left to msgspec."""
    cdef unsigned char c
    p += 1
    while p < end:
        c = p[0]
        if not STRING_STOP[c]:
            p += 1
            continue
        if c == b'"':
            return p + 1
        if c < 0x20:
            return NULL
        escaped[0] = True
        if p + 1 >= end:
            return NULL
        c = p[1]
        if c == b'u':
            if p + 5 >= end or not (is_hex(p[2]) and is_hex(p[3]) and is_hex(p[4]) and is_hex(p[5])):
                return NULL
            if (p[2] == b'd' or p[2] == b'D') and p[3] in b'89abcdefABCDEF':
                return NULL
            p += 6
        elif c in b'"\\/bfnrt':
            p += 2
        else:
            return NULL
    return NULL


cdef struct Number:
    unsigned long long mantissa   # the first 19 significant digits
    int digits                    # how many significant digits there are
    int exponent                  # the power of ten the mantissa is scaled by
    bint negative


cdef inline Text scan_number(Text p, Text end, Number *number) noexcept nogil:
    """A number by JSON's grammar, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, its digits gathered on the way."""
    cdef int written = 0
    cdef bint exponent_negative = False
    number.mantissa = 0
    number.digits = 0
    number.exponent = 0
    number.negative = p < end and p[0] == b'-'
    if number.negative:
        p += 1
    if p >= end:
        return NULL
    if p[0] == b'0':
        p += 1
    elif b'1' <= p[0] <= b'9':
        while p < end and b'0' <= p[0] <= b'9':
            if number.digits < 19:
                number.mantissa = number.mantissa * 10 + (p[0] - 48)
            number.digits += 1
            p += 1
    else:
        return NULL
    if p < end and p[0] == b'.':
        p += 1
        if p >= end or not b'0' <= p[0] <= b'9':
            return NULL
        while p < end and b'0' <= p[0] <= b'9':
            if number.mantissa or p[0] != b'0':  # zeros before the first significant digit only scale
                if number.digits < 19:
                    number.mantissa = number.mantissa * 10 + (p[0] - 48)
                number.digits += 1
            number.exponent -= 1
            p += 1
    if p < end and (p[0] == b'e' or p[0] == b'E'):
        p += 1
        if p < end and (p[0] == b'+' or p[0] == b'-'):
            exponent_negative = p[0] == b'-'
            p += 1
        if p >= end or not b'0' <= p[0] <= b'9':
            return NULL
        while p < end and b'0' <= p[0] <= b'9':
            if written < 100000:
                written = written * 10 + (p[0] - 48)
            p += 1
        number.exponent += -written if exponent_negative else written
    return p


cdef inline Text skip_word(Text p, Text end, const char *word, Py_ssize_t size) noexcept nogil:
    if end - p >= size and memcmp(p, word, size) == 0:
        return p + size
    return NULL


cdef Text skip_value(Text p, Text end, int depth) noexcept nogil:
    """Any JSON value, checked and passed over."""
    cdef unsigned char c
    cdef bint flag = False
    cdef Number number
    if p >= end or depth > MAX_DEPTH:
        return NULL
    c = p[0]
    if c == b'"':
        return skip_string(p, end, &flag)
    if c == b'{' or c == b'[':
        return skip_container(p, end, depth + 1)
    if c == b't':
        return skip_word(p, end, b"true", 4)
    if c == b'f':
        return skip_word(p, end, b"false", 5)
    if c == b'n':
        return skip_word(p, end, b"null", 4)
    return scan_number(p, end, &number)


cdef Text skip_container(Text p, Text end, int depth) noexcept nogil:
    cdef bint is_object = p[0] == b'{'
    cdef unsigned char close = b'}' if is_object else b']'
    cdef bint flag = False
    p = skip_space(p + 1, end)
    if p < end and p[0] == close:
        return p + 1
    while True:
        if is_object:
            if p >= end or p[0] != b'"':
                return NULL
            p = skip_string(p, end, &flag)
            if p == NULL:
                return NULL
            p = skip_space(p, end)
            if p >= end or p[0] != b':':
                return NULL
            p = skip_space(p + 1, end)
        p = skip_value(p, end, depth)
        if p == NULL:
            return NULL
        p = skip_space(p, end)
        if p >= end:
            return NULL
        if p[0] == close:
            return p + 1
        if p[0] != b',':
            return NULL
        p = skip_space(p + 1, end)


#: The powers of ten a double holds exactly.
cdef double *EXACT_POWERS = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                             1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]


cdef inline Text read_double(Text p, Text end, double *value):
    """A finite number, as msgspec reads it into a float; NULL for anything else.

    Up to 15 significant digits times an exact power of ten is one correctly
    rounded operation (Clinger's fast path); anything else goes to Python's
    correctly rounded parser. Either way it is the double msgspec makes.
    """
    cdef Number number
    cdef char *parsed
    cdef Text after = scan_number(p, end, &number)
    if after == NULL:
        return NULL
    if number.digits <= 15 and -22 <= number.exponent <= 22:
        if number.exponent >= 0:
            value[0] = <double> number.mantissa * EXACT_POWERS[number.exponent]
        else:
            value[0] = <double> number.mantissa / EXACT_POWERS[-number.exponent]
        if number.negative:
            value[0] = -value[0]
        return after
    value[0] = PyOS_string_to_double(<const char *> p, &parsed, NULL)
    if <Text> parsed != after or isinf(value[0]):
        return NULL
    return after


cdef struct Member:
    Text key      # the key's first byte, after the quote
    Py_ssize_t size
    Text value    # the value's first byte


cdef inline Text next_member(Text p, Text end, Member *member) noexcept nogil:
    """The member at ``p`` (a key's opening quote); NULL when its key has an escape or is bad."""
    cdef bint escaped = False
    cdef Text after
    if p >= end or p[0] != b'"':
        return NULL
    after = skip_string(p, end, &escaped)
    if after == NULL or escaped:
        return NULL
    member.key = p + 1
    member.size = after - p - 2
    p = skip_space(after, end)
    if p >= end or p[0] != b':':
        return NULL
    member.value = skip_space(p + 1, end)
    return member.value


cdef inline Text after_member(Text p, Text end, bint *last) noexcept nogil:
    """Past the ``,`` or the closing ``}`` that follows a member's value."""
    p = skip_space(p, end)
    if p >= end:
        return NULL
    if p[0] == b'}':
        last[0] = True
        return p + 1
    if p[0] != b',':
        return NULL
    last[0] = False
    return skip_space(p + 1, end)


cdef inline bint is_ascii(Text p, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(size):
        if p[i] >= 0x80:
            return False
    return True


cdef inline bint key_is(Member *member, const char *name, Py_ssize_t size) noexcept nogil:
    return member.size == size and memcmp(member.key, name, size) == 0


cdef class TelemetryReader:
    """Reads a ``telemetry_data`` event and fires the rules, in one pass; ``None`` when not the plain case.

    ``fields`` names the numeric readings in slot order (as the evaluator's
    ``slots`` count them); ``message_type`` is built as
    ``message_type(imei, data, timestamp)`` with ``data_type(bytes)`` as data.
    """

    cdef CompiledEvaluator evaluator
    cdef object message_type
    cdef object data_type
    cdef Py_ssize_t count
    cdef list names       # of bytes, kept alive for the pointers below
    cdef const char **name_of
    cdef Py_ssize_t *size_of
    cdef double *values
    cdef bint *present

    def __cinit__(self, fields, CompiledEvaluator evaluator not None, message_type, data_type):
        cdef Py_ssize_t i
        self.evaluator = evaluator
        self.message_type = message_type
        self.data_type = data_type
        self.names = [field.encode() for field in fields]
        self.count = len(self.names)
        if self.count < evaluator.width:
            raise ValueError("the rules watch more fields than were named")
        self.name_of = <const char **> PyMem_Malloc(max(self.count, 1) * sizeof(char *))
        self.size_of = <Py_ssize_t *> PyMem_Malloc(max(self.count, 1) * sizeof(Py_ssize_t))
        self.values = <double *> PyMem_Malloc(max(self.count, 1) * sizeof(double))
        self.present = <bint *> PyMem_Malloc(max(self.count, 1) * sizeof(bint))
        if not self.name_of or not self.size_of or not self.values or not self.present:
            raise MemoryError()
        for i in range(self.count):
            self.name_of[i] = <bytes> self.names[i]
            self.size_of[i] = len(self.names[i])

    def __dealloc__(self):
        PyMem_Free(self.name_of)
        PyMem_Free(self.size_of)
        PyMem_Free(self.values)
        PyMem_Free(self.present)

    def read(self, text):
        """``(message, fired)`` for a plain ``telemetry_data`` event, else ``None``."""
        cdef Py_ssize_t size
        cdef const char *start
        if not PyUnicode_CheckExact(text):
            return None
        try:
            start = PyUnicode_AsUTF8AndSize(text, &size)
        except UnicodeError:
            return None
        return self.scan(<Text> start, <Text> start + size)

    cdef object scan(self, Text p, Text end):
        cdef Member member
        cdef bint last = False
        cdef Text imei = NULL
        cdef Text data = NULL
        cdef Text data_end = NULL
        cdef Text after
        cdef bint escaped = False
        cdef bint has_timestamp = False
        cdef long long timestamp = -1
        p = skip_space(p, end)
        p = skip_word(p, end, b'["telemetry_data"', 17)
        if p == NULL:
            return None
        p = skip_space(p, end)
        if p >= end or p[0] != b',':
            return None
        p = skip_space(p + 1, end)
        if p >= end or p[0] != b'{':
            return None
        p = skip_space(p + 1, end)
        while not last:
            p = next_member(p, end, &member)
            if p == NULL:
                return None
            if key_is(&member, b"imei", 4):
                if imei != NULL or p[0] != b'"':
                    return None
                after = skip_string(p, end, &escaped)
                if after == NULL or escaped or after - p != 17 or not is_ascii(p + 1, 15):
                    return None
                imei = p + 1
            elif key_is(&member, b"data", 4):
                if data != NULL or p[0] != b'{':
                    return None
                after = self.read_data(p, end)
                if after == NULL:
                    return None
                data, data_end = p, after
            elif key_is(&member, b"timestamp", 9):
                if has_timestamp:
                    return None
                has_timestamp = True
                after = read_millis(p, end, &timestamp)
                if after == NULL:
                    return None
            else:
                after = skip_value(p, end, 1)
                if after == NULL:
                    return None
            p = after_member(after, end, &last)
            if p == NULL:
                return None
        if imei == NULL or data == NULL:
            return None
        p = skip_space(p, end)
        if p >= end or p[0] != b']' or skip_space(p + 1, end) != end:
            return None
        message = self.message_type(
            PyUnicode_DecodeASCII(<const char *> imei, 15, NULL),
            self.data_type(PyBytes_FromStringAndSize(<const char *> data, data_end - data)),
            None if timestamp < 0 else timestamp,
        )
        return message, self.evaluator.fired(self.values, self.present)

    cdef Text read_data(self, Text p, Text end):
        """The ``data`` object at ``p``: its numeric readings into ``values``, ``position`` checked."""
        cdef Member member
        cdef bint last = False
        cdef bint seen_position = False
        cdef Py_ssize_t i, slot, candidate, hint = 0
        for i in range(self.count):
            self.present[i] = False
        p = skip_space(p + 1, end)
        if p < end and p[0] == b'}':
            return p + 1
        while not last:
            p = next_member(p, end, &member)
            if p == NULL:
                return NULL
            # Devices send their fields in the same order every time: the name
            # after the last one found is tried first.
            slot = -1
            for i in range(self.count):
                candidate = (hint + i) % self.count
                if (member.size == self.size_of[candidate] and member.key[0] == self.name_of[candidate][0]
                        and memcmp(member.key, self.name_of[candidate], member.size) == 0):
                    slot = candidate
                    hint = candidate + 1
                    break
            if slot >= 0:
                if self.present[slot]:
                    return NULL
                if p < end and p[0] == b'n':
                    return NULL   # a null reading is rare: msgspec reads it
                p = read_double(p, end, &self.values[slot])
                self.present[slot] = True
            elif key_is(&member, b"position", 8):
                if seen_position:
                    return NULL
                seen_position = True
                p = skip_word(p, end, b"null", 4) if p < end and p[0] == b'n' else read_position(p, end)
            else:
                p = skip_value(p, end, 2)
            if p == NULL:
                return NULL
            p = after_member(p, end, &last)
            if p == NULL:
                return NULL
        return p


cdef Text read_position(Text p, Text end):
    """``{latitude, longitude}`` within range, other members passed over."""
    cdef Member member
    cdef bint last = False
    cdef double latitude = 0, longitude = 0
    cdef bint has_latitude = False, has_longitude = False
    if p >= end or p[0] != b'{':
        return NULL
    p = skip_space(p + 1, end)
    if p < end and p[0] == b'}':
        return NULL
    while not last:
        p = next_member(p, end, &member)
        if p == NULL:
            return NULL
        if key_is(&member, b"latitude", 8):
            if has_latitude:
                return NULL
            has_latitude = True
            p = read_double(p, end, &latitude)
        elif key_is(&member, b"longitude", 9):
            if has_longitude:
                return NULL
            has_longitude = True
            p = read_double(p, end, &longitude)
        else:
            p = skip_value(p, end, 3)
        if p == NULL:
            return NULL
        p = after_member(p, end, &last)
        if p == NULL:
            return NULL
    if not (has_latitude and has_longitude and -90 <= latitude <= 90 and -180 <= longitude <= 180):
        return NULL
    return p


cdef inline Text read_millis(Text p, Text end, long long *value) noexcept nogil:
    """A timestamp: ``null``, or a whole number of milliseconds 0 … 2**63 - 1 without sign or exponent."""
    cdef Text start = p
    cdef long long digit
    if p < end and p[0] == b'n':
        value[0] = -1
        return skip_word(p, end, b"null", 4)
    value[0] = 0
    if p < end and p[0] == b'0':
        p += 1
    else:
        while p < end and b'0' <= p[0] <= b'9':
            digit = p[0] - 48  # '0'
            if value[0] > (MAX_MILLIS - digit) // 10:
                return NULL
            value[0] = value[0] * 10 + digit
            p += 1
    if p == start or (p < end and (p[0] == b'.' or p[0] == b'e' or p[0] == b'E' or b'0' <= p[0] <= b'9')):
        return NULL
    return p
