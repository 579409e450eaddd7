"""Small Flax Linen building blocks shared by every algorithm: MLPs, actors, critics, value functions."""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]

ACTIVATIONS: dict[str, Activation] = {"relu": nn.relu, "silu": nn.silu, "gelu": nn.gelu, "tanh": jnp.tanh}


def default_init(scale: float = 2.0**0.5) -> nn.initializers.Initializer:
    """Orthogonal initialiser whose QR decompositions run one matrix at a time, also under ``vmap`` (ensembles).

    jaxlib's batched QR on CPU fans its matrices out over XLA's intra-op thread pool from inside that same pool and
    waits for them; two such QRs running at once in a jitted init occupy both threads of a 2-core machine, and the
    process hangs (seen with ReBRAC's twin critics on halfcheetah). Mapping over the batch gives the same values.
    """
    orthogonal = nn.initializers.orthogonal(scale)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        @jax.custom_batching.custom_vmap
        def draw(key: jax.Array) -> jax.Array:
            return orthogonal(key, shape, dtype)

        @draw.def_vmap
        def draw_each(axis_size: int, in_batched: list[bool], keys: jax.Array) -> tuple[jax.Array, bool]:
            if not in_batched[0]:
                return draw(keys), False
            return jax.lax.map(draw, keys), True

        return draw(key)

    return init


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` for a 2-D ``x``, whose kernel gradient is computed in the orientation XLA:CPU runs fast.

    XLA:CPU computes ``x.T @ dy`` markedly slower when its result has more rows than columns (a layer that
    narrows, such as a transformer MLP's 4w -> w projection) as when it has fewer. For such layers the gradient is
    computed as ``(dy.T @ x).T``; the optimisation barrier keeps XLA from folding the transpose back into the dot.
    """
    return x @ kernel


def _matmul_forward(x: jax.Array, kernel: jax.Array):
    return x @ kernel, (x, kernel)


def _matmul_backward(saved, dy: jax.Array):
    x, kernel = saved
    if kernel.shape[0] > kernel.shape[1]:
        kernel_grad = jax.lax.optimization_barrier(dy.T @ x).T
    else:
        kernel_grad = x.T @ dy
    return dy @ kernel.T, kernel_grad


matmul.defvjp(_matmul_forward, _matmul_backward)


def matmul_dot_general(x: jax.Array, kernel: jax.Array, dimension_numbers, precision=None, **_) -> jax.Array:
    """:func:`matmul` as a ``dot_general`` for ``nn.Dense(dot_general=...)`` on 2-D inputs."""
    if x.ndim != 2 or dimension_numbers != (((1,), (0,)), ((), ())):
        return jax.lax.dot_general(x, kernel, dimension_numbers, precision=precision)
    return matmul(x, kernel)


class MLP(nn.Module):
    """Dense stack. ``layer_norm`` after each hidden Dense (ReBRAC critics); dropout for IQL on Kitchen/Adroit."""

    hidden_dims: Sequence[int]
    out_dim: int | None = None
    activation: str = "relu"
    layer_norm: bool = False
    dropout: float = 0.0
    out_scale: float = 1e-2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden_dims:
            x = nn.Dense(width, kernel_init=default_init())(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if self.out_dim is not None:
            x = nn.Dense(self.out_dim, kernel_init=default_init(self.out_scale))(x)
        return x


class DeterministicActor(nn.Module):
    """``tanh(MLP(s))`` scaled to [-1, 1] (TD3+BC, ReBRAC, DWM-MPC)."""

    act_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    layer_norm: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array, train: bool = False) -> jax.Array:
        mlp = MLP(self.hidden_dims, self.act_dim, layer_norm=self.layer_norm, dropout=self.dropout)
        return jnp.tanh(mlp(obs, train))


class GaussianActor(nn.Module):
    """IQL's policy: Gaussian with tanh-squashed mean and state-independent log-std (as in the official code).

    Returns (mean, log_std); log-probabilities are of the unsquashed Gaussian evaluated at dataset actions.
    """

    act_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    dropout: float = 0.0
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        features = MLP(self.hidden_dims, dropout=self.dropout)(obs, train)
        mean = jnp.tanh(nn.Dense(self.act_dim, kernel_init=default_init(1e-2))(features))
        log_std = self.param("log_std", nn.initializers.zeros, (self.act_dim,))
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, jnp.broadcast_to(log_std, mean.shape)


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, x: jax.Array) -> jax.Array:
    """Log-density of a diagonal Gaussian, summed over the last axis."""
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


class TanhGaussianActor(nn.Module):
    """SAC's policy: state-dependent Gaussian squashed by tanh. Returns (mean, log_std) of the pre-tanh Gaussian."""

    act_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = MLP(self.hidden_dims)(obs)
        mean = nn.Dense(self.act_dim, kernel_init=default_init(1e-2))(features)
        log_std = nn.Dense(self.act_dim, kernel_init=default_init(1e-2))(features)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(log_std) + 1)
        return mean, log_std


def tanh_gaussian_sample(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample of a tanh-Gaussian and its log-probability (with the tanh Jacobian)."""
    noise = jax.random.normal(key, mean.shape)
    pre_tanh = mean + jnp.exp(log_std) * noise
    action = jnp.tanh(pre_tanh)
    log_prob = gaussian_log_prob(mean, log_std, pre_tanh)
    log_prob -= jnp.sum(2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh)), axis=-1)
    return action, log_prob


class Critic(nn.Module):
    """Q(s, a) as one MLP output."""

    hidden_dims: Sequence[int] = (256, 256)
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        return MLP(self.hidden_dims, 1, layer_norm=self.layer_norm, out_scale=1.0)(x)[..., 0]


class EnsembleCritic(nn.Module):
    """``num`` independent critics evaluated in one vmapped call; output shape (num, ...)."""

    hidden_dims: Sequence[int] = (256, 256)
    layer_norm: bool = False
    num: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num,
        )
        return ensemble(self.hidden_dims, self.layer_norm)(obs, action)


class ValueFunction(nn.Module):
    """V(s) as one MLP output."""

    hidden_dims: Sequence[int] = (256, 256)
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, 1, layer_norm=self.layer_norm, out_scale=1.0)(obs)[..., 0]


def polyak(target, online, rate: float):
    """Soft target update ``target <- (1 - rate) * target + rate * online``."""
    return jax.tree_util.tree_map(lambda t, o: (1.0 - rate) * t + rate * o, target, online)
