"""Builds the compiled hot path (``ext/*.pyx``) into the ``iothub`` package."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("iothub._alerts", ["ext/_alerts.pyx"], extra_compile_args=["-O3"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    ),
)
