"""Epistemic uncertainty of an ensemble of diagonal Gaussians (the threshold kappa: ``ensemble.uncertainty_threshold``).

``U(s, a)`` measures how much the elite members disagree about the outcome of (s, a):

- ``"gjs"``: mean over pairs of members of the geometric Jensen-Shannon divergence (MACURA). With ``g`` the
  normalised geometric mean ``sqrt(p1 p2) / Z`` of two Gaussians, the closed form used here is

      D(p1, p2) = 1/2 KL(g || p1) + 1/2 KL(g || p2) = -log Z = Bhattacharyya distance,

  i.e. the skew-1/2 geometric JS divergence with the KL divergences taken *from* the geometric mean (Nielsen's
  dual orientation; for exponential families it is the skew Jensen gap of the log-normaliser). The other
  orientation, ``1/2 KL(p1 || g) + 1/2 KL(p2 || g)``, agrees with it when the variances are equal and differs
  otherwise (``tests/test_world_model.py`` checks both against Monte-Carlo estimates of the definitions).
  Like every divergence between densities it is invariant to per-dimension affine rescaling, so it can be
  computed in the model's normalised output space.
- ``"disagreement"``: the largest (over output dimensions) standard deviation of the members' means.

Because GJS divides mean differences by the predicted variances, near-deterministic dimensions (hopper's joint
positions) dominate it; on hopper-medium-replay it anti-correlates with the model's one-step error while
disagreement tracks it (``benchmarks/model_faithfulness.py``), so the augmentation defaults to disagreement.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("gjs", "disagreement")


def geometric_js(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
    """Skew-1/2 geometric Jensen-Shannon divergence of two diagonal Gaussians, summed over the last axis."""
    inv1, inv2 = jnp.exp(-logvar1), jnp.exp(-logvar2)
    inv_mid = 0.5 * inv1 + 0.5 * inv2  # precision of the normalised geometric mean
    mean_mid = (0.5 * mean1 * inv1 + 0.5 * mean2 * inv2) / inv_mid
    per_dim = (0.5 * mean1**2 * inv1 + 0.5 * mean2**2 * inv2 - mean_mid**2 * inv_mid
               + 0.5 * logvar1 + 0.5 * logvar2 + jnp.log(inv_mid))
    return 0.5 * per_dim.sum(-1)


def mean_pairwise_gjs(means: jax.Array, logvars: jax.Array) -> jax.Array:
    """Mean geometric JS divergence over all pairs of members; inputs (members, ..., dim), output (...)."""
    members = means.shape[0]
    if members < 2:
        raise ValueError("ensemble uncertainty needs at least 2 elite members; raise EnsembleConfig.elites.")
    first, second = (np.asarray(ix) for ix in zip(*itertools.combinations(range(members), 2)))
    return geometric_js(means[first], logvars[first], means[second], logvars[second]).mean(0)


def disagreement(means: jax.Array) -> jax.Array:
    """Largest standard deviation of the members' means over output dimensions; (members, ..., dim) -> (...)."""
    return means.std(0).max(-1)


def measure(kind: str, means: jax.Array, logvars: jax.Array) -> jax.Array:
    """Uncertainty of kind ``kind`` from member predictions (members, ..., dim)."""
    if kind == "gjs":
        return mean_pairwise_gjs(means, logvars)
    if kind == "disagreement":
        return disagreement(means)
    raise ValueError(f"unknown uncertainty kind {kind!r}: use one of {', '.join(KINDS)}.")
