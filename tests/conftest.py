import jax
import pytest


@pytest.fixture
def x64():
    """Run the test with float64 enabled (the default compute dtype then is float64)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)
