"""Builds the compiled parts: the hot path (``iothub/core/_alerts.pyx``) and the WebSocket unmasking
(``iothub/frontend/_mask.pyx``)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("iothub.core._alerts", ["iothub/core/_alerts.pyx"], extra_compile_args=["-O3"]),
    Extension("iothub.frontend._mask", ["iothub/frontend/_mask.pyx"], extra_compile_args=["-O3"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    ),
)
