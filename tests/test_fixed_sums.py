"""kernels/cpu.py's fixed-order sums compute exactly the order their comment
states, written out here with NumPy's elementwise adds (each an IEEE
operation, the same on every CPU): so a kernel's dot products are the same
bits whatever the compiler did with them."""
import numpy as np
import pytest
from numba import njit

from glocalk_np.kernels.cpu import CHAINS, LANES, fixed_dot, fixed_dot_f64, fixed_dots4, fixed_sum


@njit(cache=True)
def _all(a, b, c, d):
    return fixed_dot(a, b), fixed_dot_f64(a, b), fixed_sum(a), fixed_dots4(a, b, c, d, a)


def stated_order(terms):
    """The sum of ``terms`` in the order kernels/cpu.py states."""
    n, block = terms.size, LANES * CHAINS
    acc = np.zeros((CHAINS, LANES), terms.dtype)
    k_block, k_group = n // block * block, n // LANES * LANES
    for k in range(0, k_block, block):
        for c in range(CHAINS):
            acc[c] = acc[c] + terms[k + c * LANES:k + (c + 1) * LANES]
    if k_group > k_block:
        acc[0] = acc[0] + terms[k_block:k_group]
    rest = k_group
    if n > k_group and n >= LANES:
        last = terms[n - LANES:].copy()
        last[:LANES - (n - k_group)] = 0
        acc[1] = acc[1] + last
        rest = n
    v = acc[0] + acc[1]
    while v.size > 1:
        v = v[:v.size // 2] + v[v.size // 2:]
    total = v[0]
    for k in range(rest, n):
        total = total + terms[k]
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 24, 25, 500, 943])
def test_sums_follow_the_stated_order(dtype, n):
    rng = np.random.default_rng(n)
    a, b, c, d = (rng.standard_normal(n).astype(dtype) * 10.0 ** rng.integers(-3, 4, n)
                  for _ in range(4))
    dot, dot64, total, four = _all(a, b, c, d)
    assert dot == stated_order(a * b) and total == stated_order(a)
    assert dot64 == stated_order(a.astype(np.float64) * b.astype(np.float64))
    assert four == (dot, stated_order(a * c), stated_order(a * d), stated_order(a * a))
    assert dot == pytest.approx(np.dot(a.astype(np.float64), b), rel=1e-3, abs=1e-3)
