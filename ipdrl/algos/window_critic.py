"""A critic of the sequence policy's own actions, trained on its windows (QT, Hu et al. 2024).

Twin MLP critics ``Q_i(s, a)`` (normalised states) regress, at every real step t of a sampled window but its last,

    y_t = sum_{k=t}^{L-1} gamma^(k-t) r_k + gamma^(L-t) min_i Q'_i(s_L, pi_ema(window)_L)

where L is the window's last real step and ``pi_ema`` an exponential moving average of the transformer, acting on
the same window (no bootstrap after a terminal; the last step trains only when it is one). So the value the policy
is guided by is the value of following the data for a few steps and then the policy itself, not the data's own
in-sample value (IQL's), and it can rate actions above the data's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ipdrl.config import Settings
from ipdrl.networks import EnsembleCritic, polyak
from ipdrl.optim import gradient_step


@dataclasses.dataclass(frozen=True)
class WindowCriticConfig(Settings):
    hidden_dims: tuple[int, ...] = (256, 256)
    learning_rate: float = 3e-4
    tau: float = 0.005
    """Polyak rate of the target critic."""
    policy_ema: float = 0.995
    """Decay of the moving average of the transformer that acts at the window's end."""


def last_steps(mask: jax.Array) -> jax.Array:
    """Index of each window's last real step."""
    return jnp.maximum(mask.sum(1).astype(jnp.int32) - 1, 0)


def window_targets(rewards: jax.Array, dones: jax.Array, mask: jax.Array, end_value: jax.Array, discount: float
                   ) -> tuple[jax.Array, jax.Array]:
    """(targets, which steps learn) for windows (B, K): backwards from the last real step L, ``G_L`` = its reward if
    it is a terminal, else ``end_value``; ``G_t = r_t + discount G_{t+1}``. Step L learns only at a terminal."""
    rows, last = jnp.arange(rewards.shape[0]), last_steps(mask)
    end_done = dones[rows, last]
    start = jnp.where(end_done > 0, rewards[rows, last], end_value)
    positions = jnp.arange(mask.shape[1])

    def backwards(g, t):
        g = jnp.where(t >= last, start, rewards[:, t] + discount * g)
        return g, g

    _, returns = jax.lax.scan(backwards, start, positions[::-1])
    before_last = positions[None] < last[:, None]
    learn = mask * (before_last | ((positions[None] == last[:, None]) & (end_done[:, None] > 0)))
    return jax.lax.stop_gradient(returns[::-1].T), learn


class WindowCritic(NamedTuple):
    config: WindowCriticConfig
    discount: float

    def network(self) -> EnsembleCritic:
        return EnsembleCritic(self.config.hidden_dims, layer_norm=True, num=2)

    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.config.learning_rate)

    def init(self, key: jax.Array, obs_dim: int, act_dim: int, policy_params: Any) -> dict:
        params = self.network().init(key, jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim)))
        return {"critic": params, "critic_target": params, "opt": self.optimizer().init(params),
                "policy_ema": policy_params}

    def track(self, state: dict, policy_params: Any) -> dict:
        return dict(state, policy_ema=polyak(state["policy_ema"], policy_params, 1.0 - self.config.policy_ema))

    def q(self, state: dict, obs: jax.Array, actions: jax.Array) -> jax.Array:
        """min_i Q_i(s, a) for normalised observations."""
        return self.network().apply(state["critic"], obs, actions).min(0)

    def update(self, state: dict, obs: jax.Array, batch: dict, end_actions: jax.Array) -> tuple[dict, dict]:
        """One TD step on a batch of windows (``obs`` normalised, (B, K, obs_dim)); ``end_actions``: the moving-average
        policy's actions on the same windows (B, K, act_dim), of which the last real step's is used. The caller moves
        ``policy_ema`` (:meth:`track`) after its policy step."""
        net = self.network()
        mask = batch["mask"]
        rows, last = jnp.arange(obs.shape[0]), last_steps(mask)
        end_value = net.apply(state["critic_target"], obs[rows, last], end_actions[rows, last]).min(0)
        targets, learn = window_targets(batch["rewards"], batch["dones"], mask, end_value, self.discount)

        def loss_fn(params):
            q = net.apply(params, obs, batch["actions"])  # (2, B, K)
            return (((q - targets) ** 2) * learn).sum() / jnp.maximum(learn.sum(), 1.0), q

        step = gradient_step(loss_fn, self.optimizer(), state["critic"], state["opt"], has_aux=True)
        new_state = dict(state, critic=step.params, opt=step.opt_state,
                         critic_target=polyak(state["critic_target"], step.params, self.config.tau))
        return new_state, {"train/own_critic_loss": step.loss, "train/own_q_mean": (step.aux[0] * mask).sum() / mask.sum()}
