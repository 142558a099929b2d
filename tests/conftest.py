"""Test options: ``--gradcheck`` turns on the finite-difference gradient checks.

The markers (``gradcheck``, ``gpu``) are registered in pyproject.toml, where
``--strict-markers`` makes any other marker an error.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--gradcheck", action="store_true", default=False,
                     help="also run the float64 finite-difference gradient checks (slow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--gradcheck"):
        return
    skip = pytest.mark.skip(reason="finite-difference gradient check: run with pytest --gradcheck")
    for item in items:
        if "gradcheck" in item.keywords:
            item.add_marker(skip)
