"""The benchmarks' shared fixtures, from the tests' support."""

from tests.support.mongodb import mongodb_uri  # noqa: F401 (a session fixture: the MongoDB server, SecantusDB unless one is named)
