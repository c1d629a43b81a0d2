"""The original's float arithmetic: sums added in order, and glibc's float64 `exp` bit for bit
(XLA's differs in the last bit for one argument in seven, and last bits decide near-ties).

glibc's algorithm (`sysdeps/ieee754/dbl-64/e_exp.c`, its FMA build): `exp(x) = 2^(k/N)
exp(r)`, N = 128, `x = k ln2/N + r`, `exp(r) - 1` by a degree-5 polynomial, `2^(k/N) = scale
(1 + tail)` from a table computed here; fused multiply-adds emulated exactly (`_fma`).
"""

from __future__ import annotations

import functools
from decimal import Decimal, localcontext

import jax
import jax.numpy as jnp
import numpy as np

from egjax.em.ieee import divide, rounded

_TABLE_BITS = 7
_N = 1 << _TABLE_BITS
# N / ln2; -ln2 / N split into a high part with trailing zeros (k * hi is exact) and the rest.
_INV_LN2_N = float.fromhex("0x1.71547652b82fep0") * _N
_NEG_LN2_HI_N = -float.fromhex("0x1.62e42fefa0000p-8")
_NEG_LN2_LO_N = -float.fromhex("0x1.cf79abc9e3b3ap-47")
_SHIFT = float.fromhex("0x1.8p52")    # adding it rounds to an integer kept in the low bits
_POLY = tuple(float.fromhex(h) for h in ("0x1.ffffffffffdbdp-2", "0x1.555555555543cp-3",
                                         "0x1.55555cf172b91p-5", "0x1.1111167a4d017p-7"))


@functools.lru_cache(maxsize=None)
def _table() -> tuple[np.ndarray, np.ndarray]:
    """`(tail [N], scale_bits [N])`: `2^(i/N) = scale_i (1 + tail_i)`, scale_i the double
    nearest `2^(i/N)`; its bits less `i << 45`, so that adding `k << 45` gives `2^(k/N)`'s
    exponent and mantissa for any k with `k % N = i`."""
    tail, bits = np.zeros(_N), np.zeros(_N, np.int64)
    with localcontext() as ctx:
        ctx.prec = 60
        for i in range(_N):
            exact = Decimal(2) ** (Decimal(i) / _N)
            scale = float(exact)
            tail[i] = float(exact / Decimal(scale) - 1)
            bits[i] = np.float64(scale).view(np.int64) - (i << (52 - _TABLE_BITS))
    return tail, bits


def _as_bits(x):
    return jax.lax.bitcast_convert_type(x, jnp.int64)


def _as_float(bits):
    return jax.lax.bitcast_convert_type(bits, jnp.float64)


def _two_sum(a, b):
    """`(s, e)` with `s = fl(a + b)` and `a + b = s + e` exactly (Knuth)."""
    s = a + b
    b_part = s - a
    return s, (a - (s - b_part)) + (b - b_part)


def _halves(a):
    """`a = hi + lo` with both halves of at most 26 significant bits (hi rounds a's
    mantissa by integer arithmetic, so no product is involved that a compiler could fuse)."""
    hi = _as_float((_as_bits(a) + (1 << 26)) & ~((1 << 27) - 1))
    return hi, a - hi


def _fma(a, b, c):
    """`a * b + c` rounded once (Boldo and Melquiond: exact product and sum, the low parts
    added rounding to odd, then one rounding to nearest). A fused product of halves is
    exact; the rounded `a * b` feeds several operations and is left unfused."""
    a_hi, a_lo = _halves(a)
    b_hi, b_lo = _halves(b)
    product = a * b
    error = ((a_hi * b_hi - product) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    high, low = _two_sum(product, c)
    low, rest = _two_sum(low, error)
    bits = _as_bits(low)
    inexact_even = (rest != 0) & ((bits & 1) == 0)
    odd = jnp.where(inexact_even, bits + jnp.where((rest > 0) == (low > 0), 1, -1), bits)
    return high + _as_float(odd)


def glibc_exp(x: jax.Array) -> jax.Array:
    """`exp(x)` of a float64 array, equal bit for bit to glibc's (FMA build), overflow to
    inf and NaN included, except that results below 2^-1022 are 0 (subnormals are flushed)."""
    x = jnp.asarray(x)
    if x.dtype != jnp.float64:
        raise ValueError(f"glibc_exp needs float64 (enable jax_enable_x64), got {x.dtype}")
    tail_table, bits_table = _table()
    # Behind a barrier the constants are values, not literals: XLA's simplifier would
    # otherwise rewrite `(s + C) - C` as `s`, which undoes the rounding tricks below.
    consts = jax.lax.optimization_barrier(jnp.asarray(
        (_INV_LN2_N, _NEG_LN2_HI_N, _NEG_LN2_LO_N, _SHIFT) + _POLY + (1.0, 2.0**1009,
                                                                    2.0**-1022)))
    inv_ln2_n, neg_hi, neg_lo, shift, c2, c3, c4, c5, one, big, tiny = consts
    tail_table, bits_table = jax.lax.optimization_barrier(
        (jnp.asarray(tail_table), jnp.asarray(bits_table)))

    shifted = _fma(inv_ln2_n, x, shift)
    k_bits = _as_bits(shifted)
    k = shifted - shift
    r = _fma(k, neg_lo, k * neg_hi + x)
    index = k_bits % _N
    r2 = r * r
    tmp = _fma(r2 * r2, _fma(r, c5, c4), _fma(r2, _fma(r, c3, c2), tail_table[index] + r))
    scale_bits = bits_table[index] + (k_bits << (52 - _TABLE_BITS))
    # For 512 <= |x| < 1024 glibc builds 2^k with its exponent moved into the normal range
    # and scales the result back. (Its extra care for subnormal results is moot here:
    # XLA:CPU flushes subnormals to zero.)
    top = jnp.abs(x)
    positive = (k_bits & 0x80000000) == 0
    moved = jnp.where(top < 512, 0, jnp.where(positive, -1009 << 52, 1022 << 52))
    scale = _as_float(scale_bits + moved)
    result = _fma(scale, tmp, scale)
    # Its negative branch is built without a fused multiply-add (measured: fusing it
    # differs from glibc in one result in 1600 there).
    unfused = scale + rounded(scale * tmp)
    result = jnp.where(top < 512, result, jnp.where(positive, big * result, tiny * unfused))
    result = jnp.where(top < 2.0**-54, one + x, result)
    result = jnp.where(x >= 1024, jnp.inf, result)
    result = jnp.where(x <= -1024, 0.0, result)
    return jnp.where(jnp.isnan(x), x, result)


def exp_as_original(x: jax.Array) -> jax.Array:
    """The exponential of `compat="original"`: glibc's in float64; XLA's in float32, where
    the original's float64 rounding cannot be followed anyway."""
    return glibc_exp(x) if x.dtype == jnp.float64 else jnp.exp(x)


def in_order_sum(x: jnp.ndarray) -> jnp.ndarray:
    """Sum over the leading axis, added one by one in order, as MATLAB/Octave's `sum`."""
    return jax.lax.scan(lambda total, row: (total + row, None), jnp.zeros_like(x[0]), x)[0]


def in_order_mean(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over the leading axis as MATLAB/Octave's `mean`: `in_order_sum / n`."""
    return divide(in_order_sum(x), x.shape[0])
