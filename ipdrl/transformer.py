"""GPT-style causal transformer over interleaved (return, state, action) tokens — the Decision Transformer network.

Step ``t`` of a segment becomes three tokens ``R_t, s_t, a_t``, each embedded linearly plus a learned embedding of
the step's timestep in its episode. The action for step ``t`` is read from the output at ``s_t``, which under
causal attention sees every earlier token and ``R_t, s_t``, but not ``a_t`` or anything later.

Segments are right-padded (real steps first, see :func:`ipdrl.data.dataset.sample_segments`), so causal attention
alone keeps padding out of every real step's output; no key mask is needed. Acting uses the same layout: the
current step sits at position ``min(t, K - 1)`` with the history before it.

Four choices keep the same function fast on XLA:CPU (``benchmarks/speed.py``): every dense layer is one 2-D matmul
over all tokens of the batch (XLA computes a 3-D ``Dense``'s kernel gradient with an extra transpose and a slow
matmul orientation), whose kernel gradient is taken in the fast orientation (:func:`ipdrl.networks.matmul`); the
last block computes queries, MLP and output only at the state tokens, the only outputs read (its keys and values
still come from every token); dropout masks are drawn 16 bits at a time (:class:`Dropout`), since generating
random bits is most of dropout's cost; and the attention softmax's gradient sums over keys with a matmul
(:func:`softmax`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ipdrl.networks import matmul_dot_general

ALL_TOKENS = slice(None)
STATE_TOKENS = slice(1, None, 3)


Dense = functools.partial(nn.Dense, dot_general=matmul_dot_general)


class Dropout(nn.Module):
    """Inverted dropout whose mask takes 16 random bits per element instead of 32: each 32-bit draw of the
    counter-based generator serves two elements, which halves the cost of the masks. An element is kept when its
    16 bits are at least ``round(rate * 2**16)``, so the rate is exact to 2**-16."""

    rate: float
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        size = int(np.prod(x.shape))
        bits = jax.random.bits(self.make_rng("dropout"), ((size + 1) // 2,), jnp.uint32)
        halves = jnp.concatenate([bits & 0xFFFF, bits >> 16])[:size].reshape(x.shape)
        keep = halves >= round(self.rate * 2**16)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


@jax.custom_vjp
def softmax(logits: jax.Array) -> jax.Array:
    """``jax.nn.softmax`` over the last axis, with the same gradient ``p * (g - sum(g * p))`` computed with the sum
    over the last axis as a product with a vector of ones: XLA:CPU reduces these short rows much more slowly
    than it multiplies them."""
    return jax.nn.softmax(logits, axis=-1)


def _softmax_forward(logits: jax.Array):
    weights = jax.nn.softmax(logits, axis=-1)
    return weights, weights


def _softmax_backward(weights: jax.Array, grad: jax.Array):
    total = (grad * weights) @ jnp.ones((weights.shape[-1], 1), weights.dtype)
    return (weights * (grad - total),)


softmax.defvjp(_softmax_forward, _softmax_backward)


def per_token(layer: nn.Dense, x: jax.Array) -> jax.Array:
    """``layer`` applied to ``(..., features)`` as one 2-D matmul over every leading position."""
    return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], layer.features)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, asked at the tokens ``queries`` selects (keys and values: every token).
    Dropout on the attention weights draws a mask per sequence and head, as CORL's does."""

    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, queries: slice, train: bool) -> jax.Array:
        batch, length, width = x.shape
        head_dim = width // self.num_heads

        def split_heads(y: jax.Array) -> jax.Array:  # (B, T, W) -> (B, H, T, W / H)
            return y.reshape(batch, -1, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        query = split_heads(per_token(Dense(width, name="query"), x[:, queries])) / jnp.sqrt(head_dim)
        key = split_heads(per_token(Dense(width, name="key"), x))
        value = split_heads(per_token(Dense(width, name="value"), x))
        positions = jnp.arange(length)
        causal = positions[queries, None] >= positions[None, :]
        logits = jnp.where(causal, jnp.einsum("bhqd,bhkd->bhqk", query, key), jnp.finfo(x.dtype).min)
        weights = Dropout(self.dropout, not train)(softmax(logits))
        attended = jnp.einsum("bhqk,bhkd->bhqd", weights, value).transpose(0, 2, 1, 3).reshape(batch, -1, width)
        return per_token(Dense(width, name="out"), attended)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP, each with a residual. Outputs
    the tokens ``queries`` selects."""

    embed_dim: int
    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, queries: slice = ALL_TOKENS) -> jax.Array:
        attended = CausalSelfAttention(self.num_heads, self.dropout)(nn.LayerNorm()(x), queries, train)
        x = x[:, queries] + Dropout(self.dropout, not train)(attended)
        h = nn.gelu(per_token(Dense(4 * self.embed_dim), nn.LayerNorm()(x)))
        return x + Dropout(self.dropout, not train)(per_token(Dense(self.embed_dim), h))


class DecisionTransformer(nn.Module):
    """Maps (returns (B, K), observations (B, K, obs_dim), actions (B, K, act_dim), timesteps (B, K)) to predicted
    actions (B, K, act_dim) in [-1, 1]. Timesteps at or beyond ``max_timestep`` share the last embedding."""

    act_dim: int
    embed_dim: int = 128
    num_layers: int = 3
    num_heads: int = 1
    dropout: float = 0.1
    max_timestep: int = 1000

    @nn.compact
    def __call__(self, returns: jax.Array, observations: jax.Array, actions: jax.Array, timesteps: jax.Array,
                 train: bool = False) -> jax.Array:
        batch, length = returns.shape
        time = nn.Embed(self.max_timestep, self.embed_dim)(jnp.clip(timesteps, 0, self.max_timestep - 1))
        tokens = jnp.stack([
            per_token(Dense(self.embed_dim), returns[..., None]) + time,
            per_token(Dense(self.embed_dim), observations) + time,
            per_token(Dense(self.embed_dim), actions) + time,
        ], axis=2).reshape(batch, 3 * length, self.embed_dim)
        x = Dropout(self.dropout, not train)(nn.LayerNorm()(tokens))
        for layer in range(self.num_layers):
            last = layer == self.num_layers - 1
            x = Block(self.embed_dim, self.num_heads, self.dropout)(x, train, STATE_TOKENS if last else ALL_TOKENS)
        return jnp.tanh(per_token(Dense(self.act_dim), nn.LayerNorm()(x)))
