"""One-step MeanFlow model of the next state (DWM-MPC v2's transition model).

MeanFlow (Geng et al. 2025, arXiv 2505.13447) learns the *average* velocity of a flow between data and noise,
``u(z_t, r, t) = 1/(t - r) * integral_r^t v(z_tau, tau) dtau``, so one network call jumps from noise to data.
Convention: ``z_t = (1 - t) x + t eps`` (x: normalised state change, eps ~ N(0, I)), instantaneous velocity
``v = eps - x``. Differentiating ``(t - r) u = integral_r^t v`` in t gives the training identity

    u(z_t, r, t) = v(z_t, t) - (t - r) * du/dt,     du/dt = v . d_z u + d_t u  (r held fixed),

whose right side, computed with one ``jax.jvp`` (tangents (v, 0, 1)) and stop-gradient, is the regression
target. A fraction of pairs has r = t, where the identity is plain flow matching. Sampling is one step,
``x = z_1 - u(z_1, 0, 1)`` with ``z_1`` taken from the caller's noise bank, differentiable in (s, a).
The network is conditioned on (t, t - r) as in the paper; (t, r) are logit-normal (wider than the paper's, see
``Config``), and the squared error is adaptively weighted by ``1 / (err + c)^p``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ipdrl.world_models import generative
from ipdrl.world_models.common import Model
from ipdrl.world_models.generative import ConditionalMLP, TransitionModel


@dataclasses.dataclass
class Config:
    """MeanFlow transition model hyperparameters."""

    hidden_dims: tuple[int, ...] = (256, 256, 256)
    time_embed_dim: int = 32
    flow_matching_fraction: float = 0.25
    """Fraction of training pairs with r = t (plain flow matching). The paper's image setting uses 75%; here the one
    step that is ever sampled is (r, t) = (0, 1), which needs wide pairs: with the paper's 75% / logit-normal(-0.4, 1)
    the held-out next-state error on hopper-medium-replay was worse than copying the state (figures: README)."""
    time_mean: float = 0.0
    """Mean of the logit-normal distribution of (r, t)."""
    time_std: float = 1.7
    """Std of that logit-normal; wide, so that pairs near (0, 1) are drawn (the paper's images used 1.0)."""
    adaptive_weight_power: float = 1.0
    """p of the adaptive loss weight 1/(err + c)^p; 0 gives plain MSE."""
    adaptive_weight_eps: float = 1e-3
    learning_rate: float = 3e-4
    batch_size: int = 256
    members: int = 1
    """Independently trained ensemble members (for DWM-MPC's disagreement penalty)."""


def noise_shape(config: Config, obs_dim: int) -> tuple[int, ...]:
    """Shape of the Gaussian draws one transition consumes: the single starting point z_1."""
    return (1, obs_dim)


def average_velocity(net: ConditionalMLP, params: Any, z: jax.Array, r: jax.Array, t: jax.Array,
                     obs: jax.Array, act: jax.Array) -> jax.Array:
    """u(z, r, t | s, a); r and t have shape z.shape[:-1]."""
    return net.apply(params, z, jnp.stack([t, t - r], axis=-1), obs, act)


def velocity_and_time_derivative(net: ConditionalMLP, params: Any, z: jax.Array, r: jax.Array, t: jax.Array,
                                 v: jax.Array, obs: jax.Array, act: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(u, du/dt) where du/dt is the total derivative along the flow: dz/dt = v, dr/dt = 0, dt/dt = 1."""
    return jax.jvp(lambda z, r, t: average_velocity(net, params, z, r, t, obs, act),
                   (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))


def sample_times(config: Config, key: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """(r, t) with r <= t, both logit-normal; a ``flow_matching_fraction`` of pairs has r = t."""
    pair_key, equal_key = jax.random.split(key)
    pair = jax.nn.sigmoid(config.time_mean + config.time_std * jax.random.normal(pair_key, (2, count)))
    t, r = pair.max(0), pair.min(0)
    r = jnp.where(jax.random.uniform(equal_key, (count,)) < config.flow_matching_fraction, t, r)
    return r, t


def loss(config: Config, net: ConditionalMLP, params: Any, batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
    """Adaptively weighted MeanFlow regression of u onto the stop-gradient target v - (t - r) du/dt."""
    x = batch["target"]
    time_key, noise_key = jax.random.split(key)
    r, t = sample_times(config, time_key, x.shape[0])
    eps = jax.random.normal(noise_key, x.shape)
    z = (1.0 - t)[:, None] * x + t[:, None] * eps
    v = eps - x
    u, du_dt = velocity_and_time_derivative(net, params, z, r, t, v, batch["obs"], batch["act"])
    target = jax.lax.stop_gradient(v - (t - r)[:, None] * du_dt)
    error = ((u - target) ** 2).sum(-1)
    weight = jax.lax.stop_gradient(1.0 / (error + config.adaptive_weight_eps) ** config.adaptive_weight_power)
    return (weight * error).mean()


def sample(config: Config, model: Model, obs: jax.Array, act: jax.Array, noise: jax.Array) -> jax.Array:
    """Next observation (raw units) of one member in one network call: ``x = z_1 - u(z_1, 0, 1)``.

    ``noise``: (..., 1, obs_dim) standard normals. Differentiable in ``obs``, ``act`` and the network.
    """
    net = generative.network(config, obs.shape[-1])
    z1 = noise[..., 0, :]
    ones = jnp.ones(z1.shape[:-1])
    u = average_velocity(net, model["net"], z1, 0.0 * ones, ones, generative.conditioning(model, obs), act)
    return generative.next_obs_from_delta(obs, z1 - u, model["stats"])


MODEL = TransitionModel(kind="meanflow", Config=Config, time_dims=2, loss=loss, sample=sample, noise_shape=noise_shape)
