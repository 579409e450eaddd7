"""The Decision Transformer's return tokens (:class:`ReturnTokens`), its critic interface (:class:`Critic`) and its
acting policy: a window of the last K steps per environment, with the return token set by the tokens' rule
(decremented target, or V(s_t), optionally with QT's candidates rated by the critic)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ipdrl.data.statistics import normalize
from ipdrl.evaluation import Params, Policy
from ipdrl.training import Learner
from ipdrl.transformer import DecisionTransformer


class ReturnTokens(NamedTuple):
    """What the return token means: a training label per transition and the rule that sets it while acting.

    ``labels`` are returns-to-go in "return units" (tokens are ``labels / return_scale``); ``timesteps`` are the
    transitions' positions in their episodes. Acting, the token is ``value_factor * V(s_t)`` recomputed at every
    step when ``value_factor`` is set (needs a :class:`Critic`), else the classic rule: ``target`` at the first step,
    then ``(R - (r * reward_scale + reward_shift)) / discount`` after each observed raw reward r.
    """

    labels: np.ndarray
    timesteps: np.ndarray
    target: float
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    discount: float = 1.0
    value_factor: float | None = None
    candidates: tuple[float, ...] = ()
    """QT's inference rule: at every step the tokens ``c * token`` (one per factor c; token: the rule's own) are
    tried and the action the critic's Q rates highest is taken; its token is the one remembered (and, under the
    classic rule, decremented from)."""


class Critic(NamedTuple):
    """A trained critic for a sequence policy: ``q_value(state, obs, actions)`` guides the actions,
    ``value(state, obs)`` sets dynamic return tokens (both in return units, raw observations in).

    ``finetune``: a learner whose ``update`` keeps training ``state`` on its own batches (its ``fields``, its
    ``sample``) at every policy update; None keeps the critic frozen. ``action_weight(state, obs, actions)``: when
    given, each data action's imitation error is weighted by it (e.g. IQL's AWR weight, so that the sequence policy
    imitates the actions the critic rates above its value, as IQL's own actor does). ``proposals(state, obs,
    key)``: further candidate actions, (n, envs, act_dim), that the 'critic' ensemble rule weighs beside the
    transformers' own (e.g. samples of IQL's policy).
    """

    state: Any
    q_value: Callable[[Any, jax.Array, jax.Array], jax.Array]
    value: Callable[[Any, jax.Array], jax.Array]
    finetune: Learner | None = None
    action_weight: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None
    proposals: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None


def sequence_policy(model: DecisionTransformer, length: int, return_scale: float, returns: ReturnTokens,
                    critic: Critic | None = None, members: int = 1, ensemble_action: str = "mean") -> Policy:
    """The acting policy: a per-environment window of the last ``length`` steps (same right-padded layout as
    training), the return token set by ``returns``' rule. Params: ``{"params", "obs_stats", "return_target",
    "critic"?}`` as :func:`make_learner`'s ``policy_params`` gives them; with ``members`` > 1, ``params`` stacks an
    ensemble's transformers and the policy acts with their mean action, or with ``ensemble_action`` 'critic' the
    member action (or ``critic.proposals``' action) that the critic's Q rates highest."""

    def predict(params: Params, obs: jax.Array, key: jax.Array, position: jax.Array, *window: jax.Array
                ) -> jax.Array:
        """The action at ``position`` of every environment's window."""
        envs = jnp.arange(obs.shape[0])
        one = lambda member: model.apply(member, *window)[envs, position]
        if members == 1 and (ensemble_action == "mean" or critic.proposals is None):  # nothing to choose among
            return one(params["params"])
        actions = jax.vmap(one)(params["params"]) if members > 1 else one(params["params"])[None]
        if ensemble_action == "mean":
            return actions.mean(0)
        if critic.proposals is not None:
            actions = jnp.concatenate([actions, critic.proposals(params["critic"], obs, key)])
        q = jax.vmap(lambda a: critic.q_value(params["critic"], obs, a))(actions)  # (candidates, envs)
        return actions[jnp.argmax(q, axis=0), envs]

    def init_carry(params: Params, num_envs: int) -> dict:
        obs_dim = params["obs_stats"]["mean"].shape[-1]
        act_dim = model.act_dim
        return {
            "observations": jnp.zeros((num_envs, length, obs_dim)),
            "actions": jnp.zeros((num_envs, length, act_dim)),
            "returns": jnp.zeros((num_envs, length)),
            "timesteps": jnp.zeros((num_envs, length), jnp.int32),
            "target": jnp.zeros(num_envs),  # remaining target of the classic rule, in return units
            "step": jnp.zeros(num_envs, jnp.int32),
        }

    def return_token(params: Params, carry: dict, obs: jax.Array, prev_reward: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
        """(remaining target, return-unit token) for the current step."""
        if returns.value_factor is not None:
            return carry["target"], returns.value_factor * critic.value(params["critic"], obs)
        earned = prev_reward * returns.reward_scale + returns.reward_shift
        target = jnp.where(carry["step"] == 0, params["return_target"], (carry["target"] - earned) / returns.discount)
        return target, target

    def act(params: Params, carry: dict, obs: jax.Array, prev_reward: jax.Array, key: jax.Array):
        step = carry["step"]
        envs = jnp.arange(obs.shape[0])
        position = jnp.minimum(step, length - 1)
        full = step >= length

        def push(window: jax.Array, value: jax.Array) -> jax.Array:
            # A full window drops its oldest step; the current one goes at `position`.
            full_rows = full.reshape((-1,) + (1,) * (window.ndim - 1))
            return jnp.where(full_rows, jnp.roll(window, -1, 1), window).at[envs, position].set(value)

        target, token = return_token(params, carry, obs, prev_reward)
        window = {
            "observations": push(carry["observations"], normalize(obs, params["obs_stats"])),
            "actions": push(carry["actions"], jnp.zeros_like(carry["actions"][:, 0])),
            "timesteps": push(carry["timesteps"], step),
        }

        def action_for(token: jax.Array) -> tuple[jax.Array, jax.Array]:
            tokens = push(carry["returns"], token / return_scale)
            action = predict(params, obs, key, position, tokens, window["observations"], window["actions"],
                             window["timesteps"])
            return action, tokens

        if returns.candidates:
            options = jnp.asarray(returns.candidates)[:, None] * token  # (candidates, envs)
            actions, tokens = jax.vmap(action_for)(options)
            q = jax.vmap(lambda a: critic.q_value(params["critic"], obs, a))(actions)
            best = jnp.argmax(q, axis=0)
            action, window["returns"] = actions[best, envs], tokens[best, envs]
            if returns.value_factor is None:
                target = options[best, envs]
        else:
            action, window["returns"] = action_for(token)
        window["actions"] = window["actions"].at[envs, position].set(action)
        return dict(window, target=target, step=step + 1), action

    return Policy(init_carry=init_carry, act=act)
