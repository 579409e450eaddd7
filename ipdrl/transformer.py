"""GPT-style causal transformer over interleaved (return, state, action) tokens — the Decision Transformer network.

Step ``t`` of a segment becomes three tokens ``R_t, s_t, a_t``, each embedded linearly plus a learned embedding of
the step's timestep in its episode. The action for step ``t`` is read from the output at ``s_t``, which under
causal attention sees every earlier token and ``R_t, s_t``, but not ``a_t`` or anything later.

Segments are right-padded (real steps first, see :func:`ipdrl.data.dataset.sample_segments`), so causal attention
alone keeps padding out of every real step's output; no key mask is needed. Acting uses the same layout: the
current step sits at position ``min(t, K - 1)`` with the history before it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP, each with a residual."""

    embed_dim: int
    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.dropout,
                                            deterministic=not train)(h, h, mask=mask)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.LayerNorm()(x)
        h = nn.Dense(self.embed_dim)(nn.gelu(nn.Dense(4 * self.embed_dim)(h)))
        return x + nn.Dropout(self.dropout, deterministic=not train)(h)


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
            nn.Dense(self.embed_dim)(returns[..., None]) + time,
            nn.Dense(self.embed_dim)(observations) + time,
            nn.Dense(self.embed_dim)(actions) + time,
        ], axis=2).reshape(batch, 3 * length, self.embed_dim)
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.LayerNorm()(tokens))
        mask = nn.make_causal_mask(jnp.ones((1, 3 * length), bool))  # (1, 1, 3K, 3K), broadcast over the batch
        for _ in range(self.num_layers):
            x = Block(self.embed_dim, self.num_heads, self.dropout)(x, mask, train)
        x = nn.LayerNorm()(x).reshape(batch, length, 3, self.embed_dim)
        return jnp.tanh(nn.Dense(self.act_dim)(x[:, :, 1]))
