"""Test setup: two forced host devices, so multi-device code is always exercised on CPU."""

import gc
import os

_flag = "--xla_force_host_platform_device_count=2"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS is set)
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs a test in float64."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Releases each test module's compiled programs after it. One process runs the whole suite; without
    this it keeps every XLA:CPU executable of ~500 tests (7 GB, and memory maps towards the kernel's
    vm.max_map_count of 65530, where the compiler segfaulted in test_train at ~95 % of the suite)."""
    yield
    jax.clear_caches()
    gc.collect()
