r"""Every seed the engine derives from another, by one formula.

Randomness in the engine is a documented function of integers, never a stateful generator shared
between users: a run's seed gives each trajectory its seed, a trajectory's optimizer gives each
step (and each query of a step) its seed, and a seed gives each parameter tensor its stream of
normal draws (:func:`engine.oracles.seeded_normal`). All of them are

.. math:: \text{derive}(s, i_1, i_2, \dots) = \big((s \cdot 1\,000\,003 + i_1) \cdot 1\,009 + i_2\big)
          \cdots \bmod m

(two primes; :math:`m = 2^{31}` unless said otherwise). Indices after the first stay below
1,009, so no two index tuples of one seed collide. This module imports nothing: the oracles, the
optimizers and the run all use it.
"""

from __future__ import annotations

SEED_MODULUS = 2**31
_FIRST, _NEXT = 1_000_003, 1_009


def derive_seed(seed: int, *indices: int, modulus: int = SEED_MODULUS) -> int:
    """``((seed * 1_000_003 + indices[0]) * 1_009 + indices[1]) * 1_009 + ...`` modulo ``modulus``."""
    if not indices:
        raise ValueError("derive_seed needs at least one index")
    h = int(seed) * _FIRST + int(indices[0])
    for i in indices[1:]:
        h = h * _NEXT + int(i)
    return h % modulus


def step_seed(seed: int, step: int, query: int = 0) -> int:
    r"""The seed of random draw ``query`` at step ``step`` of an optimizer constructed with
    ``seed``: :math:`s_{t,i} = ((\text{seed}\cdot 1\,000\,003 + t)\cdot 1\,009 + i) \bmod 2^{31}`.

    Zeroth-order optimizers count ``step`` from 0 (steps completed) and ``query`` is the SPSA
    query :math:`i < q` or the ranked candidate :math:`i < m` (both at most 64); second-order ones
    count from 1 (the paper's :math:`t`) with ``query`` 0."""
    return derive_seed(seed, step, query)


def trajectory_seed(seed: int, lane: int, row: int) -> int:
    r"""A seeded optimizer's seed for trajectory ``row`` of lane ``lane`` of a run seeded with
    ``seed``: :math:`(\text{seed}\cdot 1\,000\,003 + 10\,007\,\text{lane} + \text{row}) \bmod 2^{31}`
    (the value ``engine.run`` has always used, so recorded runs replay)."""
    return derive_seed(seed, lane * 10_007 + row)


def minibatch_seed(seed: int, tick: int, size: int) -> int:
    r"""The seed of the minibatch of ``size`` samples drawn at tick ``tick`` of a run seeded with
    ``seed``, for lanes whose batch size differs from the problem's default (lanes of one size
    share it): :math:`h_0 = 0,\; h_{j+1} = (1\,000\,003\, h_j + p_j + \text{0x9E3779B9}) \bmod
    (2^{63} - 1)` over :math:`p = (\text{seed}, \text{tick}, \text{size})` (the value
    ``engine.run`` has always used, so recorded runs replay)."""
    h = 0
    for p in (seed, tick, size):
        h = (h * _FIRST + int(p) + 0x9E3779B9) % (2**63 - 1)
    return h


def probe_noise_seed(seed: int, step: int) -> int:
    r"""The seed of a probe's gradient-noise subset at step ``step`` of a probe configuration seeded
    with ``seed``: :math:`(\text{seed}\cdot 1\,000\,003 + \text{step}) \bmod 2^{63}`."""
    return derive_seed(seed, step, modulus=2**63)
