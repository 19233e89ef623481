"""The plugin's own test suite runs cmdbench's generator contract against its generator."""

import pytest
from cmdbench_example_plugin.generator import NAME, build

from cmdbench.interfaces import GeneratorSpec
from cmdbench.testing import CHECKS, check_generator, contract_case


def test_registered_generator_follows_the_contract():
    check_generator(NAME)  # loads cmdbench's plugins, entry points included, then runs every check


@pytest.fixture(scope="module")
def case():
    return contract_case(build(GeneratorSpec(tiny=True)))


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_each_check(case, check):
    CHECKS[check](case)
