"""Intervals of continuity scores (`pair_bootstrap`, `seed_interval`) on a synthetic
explainer whose ratio distribution is known: `R_s(x) = L_s x_0` on 2-D inputs, with
isotropic Gaussian steps `x' = x + d`. Its ratio `|R(x) - R(x')| / ||x - x'||` is
`L_s |cos phi|`, `phi` uniform: the Lipschitz constant is `L_s` and the mean ratio
`2 L_s / pi`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import continuity

L, PAIRS, SEEDS, REPEATS, RESAMPLES = 3.0, 200, 3, 200, 200


def _ratios(rng, lipschitz):
    """Continuity ratios of `R(x) = lipschitz[...] * x_0` on PAIRS random pairs each:
    lipschitz `[...]` -> `[..., PAIRS]`, through the library's ratio function."""
    shape = (*np.shape(lipschitz), PAIRS)
    x = rng.normal(size=(*shape, 2))
    partner = x + rng.normal(size=(*shape, 2))
    scale = np.asarray(lipschitz)[..., None, None]
    ratios = continuity.continuity_ratios(jnp.asarray((scale * x[..., :1]).reshape(-1, 1)),
                                          jnp.asarray((scale * partner[..., :1]).reshape(-1, 1)),
                                          jnp.asarray(x.reshape(-1, 2)),
                                          jnp.asarray(partner.reshape(-1, 2)))
    return np.asarray(ratios).reshape(shape)


def _coverage(ratios, truth, key, log=False):
    """Fraction of REPEATS intervals (seeds on axis 1) covering `truth`."""
    boot = np.asarray(continuity.pair_bootstrap(key, jnp.asarray(ratios)))   # [B, R, K]
    estimates = ratios.mean(axis=-1)
    if log:
        boot, estimates = np.log(boot), np.log(estimates)
    interval = continuity.seed_interval(estimates.T, boot.std(axis=0).T)
    return np.mean((interval.low <= truth) & (truth <= interval.high)), interval


def test_explain_all_pads_and_matches_the_explainer():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(7, 2)), jnp.float32)
    calls = []

    def explainer(images, scale):
        calls.append(images.shape)
        return images[:, :1] * scale[:, None]

    scale = jnp.arange(7.0)
    out = continuity.explain_all(explainer, x, scale, batch_size=3)
    np.testing.assert_allclose(out, x[:, :1] * scale[:, None])
    assert set(calls) == {(3, 2)}
    with pytest.raises(ValueError, match="first at pair 2"):
        continuity.explain_all(lambda images: images.at[2 % 3].set(np.nan), x, batch_size=3)


def test_intervals_cover_the_known_mean_ratio_over_seeds():
    rng = np.random.default_rng(1)
    lipschitz = L * (1 + 0.2 * rng.normal(size=(REPEATS, SEEDS)))   # each run its own net
    ratios = _ratios(rng, lipschitz)
    assert ratios.max() <= lipschitz.max() * (1 + 1e-5)             # L bounds every ratio
    coverage, interval = _coverage(ratios, 2 * L / np.pi, jax.random.key(0))
    assert 0.9 <= coverage <= 1.0
    # Not vacuous: about the width Student's t gives with the true sd of a run's score.
    sd = np.sqrt((0.2 * 2 * L / np.pi) ** 2 + L ** 2 * (0.5 - 4 / np.pi ** 2) / PAIRS)
    assert np.median(interval.high - interval.low) < 1.25 * 2 * 4.303 * sd / np.sqrt(SEEDS)


def test_pair_only_intervals_cover_and_are_near_nominal():
    rng = np.random.default_rng(2)
    ratios = _ratios(rng, np.full((REPEATS, 1), L))                 # one run: pairs only
    coverage, _ = _coverage(ratios, 2 * L / np.pi, jax.random.key(1))
    assert 0.9 <= coverage <= 0.99


def test_paired_ratio_of_two_arms_covers_the_true_ratio():
    rng = np.random.default_rng(3)
    lipschitz = L * (1 + 0.2 * rng.normal(size=(REPEATS, SEEDS)))
    x_ratios = _ratios(rng, lipschitz)
    # The second arm's explainer is 0.5 x the first on the same pairs: the ratio is 0.5.
    noise = 1 + 0.1 * rng.normal(size=(REPEATS, SEEDS, 1))
    both = np.stack([x_ratios, 0.5 * noise * x_ratios])            # [2, R, K, P]
    boot = np.asarray(continuity.pair_bootstrap(jax.random.key(2), jnp.asarray(both)))
    log_ratio = np.log(both[1].mean(-1) / both[0].mean(-1))
    interval = continuity.seed_interval(log_ratio.T, np.log(boot[:, 1] / boot[:, 0]).std(0).T)
    covered = (interval.low <= np.log(0.5)) & (np.log(0.5) <= interval.high)
    assert covered.mean() >= 0.9


def test_bootstrap_of_the_max_stays_at_or_below_the_lipschitz_constant():
    rng = np.random.default_rng(4)
    ratios = _ratios(rng, np.array([L]))                            # [1, PAIRS]
    boot = np.asarray(continuity.pair_bootstrap(jax.random.key(3), jnp.asarray(ratios),
                                                statistic="max"))
    assert boot.shape == (2000, 1)
    assert boot.max() == pytest.approx(ratios.max()) and ratios.max() <= L * (1 + 1e-6)
    assert ratios.max() >= 0.99 * L                                  # 200 directions reach it


def test_interval_functions_reject_bad_input():
    with pytest.raises(ValueError, match="statistic"):
        continuity.pair_bootstrap(jax.random.key(0), jnp.ones((3, 4)), statistic="median")
    with pytest.raises(ValueError, match="P >= 2"):
        continuity.pair_bootstrap(jax.random.key(0), jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="pair_se"):
        continuity.seed_interval(np.ones((3, 2)), np.ones((3,)))


def test_seed_interval_known_values_and_pairing():
    t2 = 4.302653                                                   # Student's t, 2 df, 97.5%
    same = continuity.seed_interval(np.ones((3, 1)), np.full((3, 1), 0.3))
    np.testing.assert_allclose(same.high - same.estimate, t2 * 0.3 / np.sqrt(3), rtol=1e-5)
    spread = continuity.seed_interval(np.array([[0.0], [1.0], [2.0]]), np.zeros((3, 1)))
    np.testing.assert_allclose([spread.estimate, spread.low], [[1.0], [1 - t2 / np.sqrt(3)]],
                               rtol=1e-5)
    one = continuity.seed_interval(np.array([2.0]), np.array([0.5]))
    np.testing.assert_allclose([one.low, one.high], [2 - 1.959964 * 0.5, 2 + 1.959964 * 0.5],
                               rtol=1e-5)
    ratios = jnp.asarray(np.random.default_rng(5).uniform(size=(1, 50)))
    boot = continuity.pair_bootstrap(jax.random.key(4), jnp.concatenate([ratios, 2 * ratios]),
                                     resamples=100)
    np.testing.assert_allclose(boot[:, 1], 2 * boot[:, 0], rtol=1e-6)   # the same pairs
