"""The generator contract (:mod:`cmdbench.testing`), checked for every registered generator built with
``GeneratorSpec(tiny=True)``: one test per (generator, check). New generators are picked up through
``registry.load_plugins()``. The checks themselves are tested against generators that break them in
``tests/test_plugins.py``.
"""

from __future__ import annotations

import pytest

from cmdbench.interfaces import GeneratorSpec
from cmdbench.registry import GENERATORS, load_plugins
from cmdbench.testing import CHECKS, ContractCase, contract_case

load_plugins()
GENERATOR_NAMES = GENERATORS.names()

_cache: dict[str, ContractCase] = {}


@pytest.fixture(scope="module", params=GENERATOR_NAMES)
def case(request) -> ContractCase:
    if request.param not in _cache:
        _cache[request.param] = contract_case(request.param, GeneratorSpec(tiny=True))
    return _cache[request.param]


def test_registry_is_not_empty():
    assert "tiny-unet3d" in GENERATOR_NAMES


@pytest.mark.parametrize("check", list(CHECKS))
def test_contract(case, check):
    CHECKS[check](case)
