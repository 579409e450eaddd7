"""Conditional diffusion model of the next state (DWM-MPC v1's transition model).

``p(s' | s, a)`` is modelled as a DDPM over the normalised state change ``x = (s' - s - mean) / std`` with an
MLP denoiser ``eps_theta(x_k, k | s, a)`` trained by epsilon-prediction MSE, cosine noise schedule, K steps.

The sampler takes every Gaussian draw of the reverse chain as an argument (``noise``, shape
``(K, obs_dim)``: the start ``x_K`` then one draw per stochastic step). With the noise fixed the map
``(s, a) -> s'`` is a composition of differentiable functions, so gradients reach ``s`` and ``a`` through
all K denoising steps; that is what DWM-MPC back-propagates through. ``eta`` interpolates between DDPM
posterior sampling (1) and deterministic DDIM (0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ipdrl.world_models import generative
from ipdrl.world_models.common import Model
from ipdrl.world_models.generative import ConditionalMLP, TransitionModel


@dataclasses.dataclass
class Config:
    """Diffusion transition model hyperparameters."""

    hidden_dims: tuple[int, ...] = (256, 256, 256)
    time_embed_dim: int = 32
    denoising_steps: int = 10
    """K: noise levels in training and reverse steps in sampling."""
    eta: float = 1.0
    """Reverse-step stochasticity: 1 = DDPM posterior, 0 = deterministic DDIM."""
    learning_rate: float = 3e-4
    batch_size: int = 256
    members: int = 1
    """Independently trained ensemble members (for DWM-MPC's disagreement penalty)."""


def noise_shape(config: Config, obs_dim: int) -> tuple[int, ...]:
    """Shape of the Gaussian draws one transition consumes."""
    return (config.denoising_steps, obs_dim)


def alpha_bars(steps: int) -> jax.Array:
    """Cumulative signal fractions of the cosine schedule (Nichol & Dhariwal 2021) for noise levels 1..K."""
    grid = np.linspace(0.0, 1.0, steps + 1)
    f = np.cos((grid + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    return jnp.asarray(np.cumprod(1.0 - betas), jnp.float32)


def loss(config: Config, net: ConditionalMLP, params: Any, batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
    """Epsilon-prediction MSE at a uniformly drawn noise level."""
    x = batch["target"]
    level_key, noise_key = jax.random.split(key)
    level = jax.random.randint(level_key, x.shape[:1], 0, config.denoising_steps)
    a_bar = alpha_bars(config.denoising_steps)[level][:, None]
    eps = jax.random.normal(noise_key, x.shape)
    noisy = jnp.sqrt(a_bar) * x + jnp.sqrt(1.0 - a_bar) * eps
    times = ((level + 1) / config.denoising_steps)[:, None]
    return ((net.apply(params, noisy, times, batch["obs"], batch["act"]) - eps) ** 2).mean()


def sample(config: Config, model: Model, obs: jax.Array, act: jax.Array, noise: jax.Array) -> jax.Array:
    """Next observation (raw units) of one member for raw ``obs`` (..., obs_dim), ``act`` (..., act_dim).

    ``noise``: (..., K, obs_dim) standard normals. Differentiable in ``obs``, ``act`` and the network.
    """
    steps = config.denoising_steps
    net = generative.network(config, obs.shape[-1])
    cond_obs = generative.conditioning(model, obs)
    a_bar = alpha_bars(steps)
    a_bar_prev = jnp.concatenate([jnp.ones(1), a_bar[:-1]])
    # Level k = K-1 .. 0; the draw at level 0 is unused (sigma = 0 there), so K draws cover the chain.
    levels = jnp.arange(steps - 1, -1, -1)
    draws = jnp.concatenate([noise[..., 1:, :], jnp.zeros_like(noise[..., :1, :])], axis=-2)
    draws = jnp.moveaxis(draws, -2, 0)

    def reverse_step(x, inputs):
        level, z = inputs
        times = jnp.full((*x.shape[:-1], 1), (level + 1) / steps)
        eps = net.apply(model["net"], x, times, cond_obs, act)
        x0 = (x - jnp.sqrt(1.0 - a_bar[level]) * eps) / jnp.sqrt(a_bar[level])
        sigma = config.eta * jnp.sqrt((1 - a_bar_prev[level]) / (1 - a_bar[level]) * (1 - a_bar[level] / a_bar_prev[level]))
        direction = jnp.sqrt(jnp.maximum(1.0 - a_bar_prev[level] - sigma**2, 0.0)) * eps
        return jnp.sqrt(a_bar_prev[level]) * x0 + direction + sigma * z, None

    delta, _ = jax.lax.scan(reverse_step, noise[..., 0, :], (levels, draws))
    return generative.next_obs_from_delta(obs, delta, model["stats"])


MODEL = TransitionModel(kind="diffusion", Config=Config, time_dims=1, loss=loss, sample=sample, noise_shape=noise_shape)
