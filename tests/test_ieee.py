"""The float arithmetic of compat="original": glibc's exp, and XLA kept from rewriting
(also the rounding of float64 sums, in both modes)."""

import ctypes
import math
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax.em.ieee import divide, rounded
from egjax.em.original.arithmetic import glibc_exp, in_order_mean, in_order_sum
from egjax.em.reduce import image_mean


def _c_library_exp():
    """The platform's `exp` when it is the glibc build the original ran on (>= 2.28, whose
    algorithm this is, on a CPU with FMA, whose build it is), else skip."""
    name, version = platform.libc_ver()
    if name != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < (2, 28):
        pytest.skip(f"needs glibc >= 2.28, have {name} {version}")
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read().split()
    except OSError:
        pytest.skip("cannot read the CPU flags")
    if "fma" not in flags:
        pytest.skip("glibc uses its build without FMA on this CPU")
    libm = ctypes.CDLL("libm.so.6")
    libm.exp.restype, libm.exp.argtypes = ctypes.c_double, [ctypes.c_double]
    return libm.exp


def test_glibc_exp_equals_the_c_library_bit_for_bit(x64):
    c_exp = _c_library_exp()
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-40, 0, 150_000), -rng.exponential(1, 50_000),
                        rng.uniform(-709, 709, 20_000), rng.uniform(-1e-15, 1e-15, 100),
                        [0.0, -0.0, 1.0, -1.0, 709.78, 709.79, 1e4, -1e4, np.inf, -np.inf]])
    expected = np.array([c_exp(v) for v in x.tolist()])
    got = np.asarray(jax.jit(glibc_exp)(x))
    subnormal = np.abs(expected) < np.finfo(np.float64).tiny
    np.testing.assert_array_equal(got[~subnormal], expected[~subnormal])
    assert np.all(got[subnormal] == 0)          # XLA:CPU flushes subnormals


def test_glibc_exp_known_values(x64):
    x = jnp.array([0.0, 1.0, -1.0, 0.5, 710.0, -746.0, jnp.inf, -jnp.inf, jnp.nan])
    got = np.asarray(glibc_exp(x))
    np.testing.assert_array_equal(got[:4], [1.0, math.e, 1 / math.e, math.sqrt(math.e)])
    np.testing.assert_array_equal(got[4:8], [np.inf, 0.0, np.inf, 0.0])
    assert np.isnan(got[8])


def test_glibc_exp_needs_float64():
    with pytest.raises(ValueError, match="float64"):
        glibc_exp(jnp.zeros(3, jnp.float32))


def test_rounded_products_are_added_as_rounded(x64):
    """`total + rounded(a * b)` in a compiled loop rounds the product before adding it."""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, (2, 30, 1000))
    expected = np.zeros(1000)
    for i in range(30):
        expected = expected + a[i] * b[i]
    step = lambda total, ab: (total + rounded(ab[0] * ab[1]), None)
    got = jax.jit(lambda a, b: jax.lax.scan(step, jnp.zeros(1000), (a, b))[0])(a, b)
    np.testing.assert_array_equal(got, expected)


def test_divide_divides_by_a_broadcast_divisor(x64):
    rng = np.random.default_rng(2)
    x, d = rng.uniform(0, 1, (50, 1000)), rng.uniform(1, 3, 1000)
    np.testing.assert_array_equal(jax.jit(divide)(x, d), x / d)
    np.testing.assert_array_equal(jax.jit(lambda x: divide(x, 49))(x), x / 49)


def test_in_order_sum_adds_first_to_last(x64):
    x = jnp.array([1e16, 1.0, -1e16, 1.0])      # ((1e16 + 1) - 1e16) + 1 = 1, not 0 or 2
    assert float(jax.jit(in_order_sum)(x)) == 1.0
    assert float(jax.jit(in_order_mean)(x)) == 0.25


def test_a_float32_sum_is_rounded_before_it_is_divided():
    """`image_mean` over images and axes divides the float64 sum rounded to float32, as
    numpy does. Without `reduce.narrow` XLA skipped that rounding in this program (1,525 of
    these 5,000 means were 1 ulp off); in the fit it skipped it on one device and kept it
    on two, so the fit changed with the number of devices."""
    rng = np.random.default_rng(5)
    x = rng.uniform(1, 100, (12, 2, 5000)).astype(np.float32)    # float64 sums are exact
    total = np.sum(x.astype(np.float64), axis=(0, 1)).astype(np.float32)
    got = jax.jit(lambda x: image_mean(x, (0, 1), 12, None))(x)
    np.testing.assert_array_equal(got, total / np.float32(12))
