# cython: freethreading_compatible = False
"""The compiled alert evaluator: the per-message rule check, in C.

Same meaning as ``iothub.rules.evaluate_reference``; the rules are flattened
into C arrays once, and a message costs one pass over them with no Python
objects made unless a rule fires.
"""

from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

cdef enum Op:
    GT = 0
    GE = 1
    LT = 2
    LE = 3
    EQ = 4
    NE = 5

cdef tuple NONE_FIRED = ()


cdef class CompiledEvaluator:
    """Evaluates flattened rules against a readings tuple.

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
        cdef double x, t
        cdef bint fired
        cdef list hits = None
        if PyTuple_GET_SIZE(values) < self.width:
            raise ValueError("readings tuple is shorter than the rules need")
        for i in range(self.count):
            value = <object> PyTuple_GET_ITEM(values, self.slots[i])
            if value is None:
                continue
            x = PyFloat_AS_DOUBLE(value) if PyFloat_CheckExact(value) else float(value)
            t = self.thresholds[i]
            op = self.ops[i]
            if op == GT:
                fired = x > t
            elif op == GE:
                fired = x >= t
            elif op == LT:
                fired = x < t
            elif op == LE:
                fired = x <= t
            elif op == EQ:
                fired = x == t
            else:
                fired = x != t
            if fired:
                if hits is None:
                    hits = []
                hits.append(i)
        return NONE_FIRED if hits is None else tuple(hits)
