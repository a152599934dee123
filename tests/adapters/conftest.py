"""Fixtures for the adapter tests."""

import pytest

from adapters.spec import SteeringSpec
from tests.adapters.adapter_helpers import make_spec


@pytest.fixture
def spec() -> SteeringSpec:
    return make_spec()

