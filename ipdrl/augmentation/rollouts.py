"""Imagined receding-horizon rollouts in the ensemble model, and the verdict on each (cut, accept or reject)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ipdrl.augmentation.config import AugmentConfig
from ipdrl.augmentation.values import RealData, ValueFunctions, continuation_values
from ipdrl.planning import mppi
from ipdrl.planning.mppi import PlannerConfig
from ipdrl.world_models import ensemble
from ipdrl.world_models.ensemble import EnsembleModel


@functools.partial(jax.jit, static_argnames=("values", "planner", "mode", "length", "kind"))
def imagined_rollouts(model: EnsembleModel, start_obs: jax.Array, key: jax.Array, values: ValueFunctions,
                      planner: PlannerConfig, mode: str, length: int, kind: str) -> dict[str, jax.Array]:
    """``length`` receding-horizon steps in the model from a batch of start states; arrays (M, length, ...).

    Each step plans (``mode`` 'mpc') or picks argmax Q (``mode`` 'greedy-q'), executes the first action with a
    random elite and records U(s, a) of kind ``kind``. Rollouts always run ``length`` steps; cutting at
    uncertainty and termination happens afterwards (:func:`judge`). The model is an argument and everything
    else static, so calls with other data, seeds, kappas or ratios reuse one compilation.
    """
    if planner.uncertainty_penalty > 0:
        def planner_step(obs, actions, key):
            next_obs, rewards, dones, u = ensemble.imagine_step(model, obs, actions, key, kind)
            return next_obs, values.scale(rewards), dones, u
    else:  # without the penalty the planner needs no uncertainty: one elite per particle is 'elites' x cheaper
        def planner_step(obs, actions, key):
            next_obs, rewards, dones = ensemble.member_step(model, obs, actions, key)
            return next_obs, values.scale(rewards), dones, jnp.zeros_like(rewards)

    def choose(obs: jax.Array, warm: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        if mode == "greedy-q":
            action = mppi.greedy_q_action(obs, key, values.q, values.policy, planner.num_samples,
                                              planner.proposal_noise)
            return action, warm
        plan = mppi.plan(obs, warm, key, planner_step, values.v, values.policy, values.gamma, planner)
        return plan[:, 0], mppi.shift_plan(plan)

    def body(carry, keys):
        obs, warm = carry
        actions, warm = choose(obs, warm, keys[0])
        next_obs, rewards, dones, u = ensemble.imagine_step(model, obs, actions, keys[1], kind)
        out = {"observations": obs, "actions": actions, "rewards": rewards, "next_observations": next_obs,
               "terminals": dones, "uncertainty": u, "next_values": values.v(next_obs)}
        return (next_obs, warm), out

    warm = mppi.policy_warm_start(start_obs, values.policy, planner.horizon)
    _, out = jax.lax.scan(body, (start_obs, warm), jax.random.split(key, (length, 2)))
    return jax.tree_util.tree_map(lambda x: x.swapaxes(0, 1), out)


class Judgement(NamedTuple):
    lengths: np.ndarray          # kept imagined steps per rollout
    terminated: np.ndarray       # kept segment ends in a predicted termination
    imagined_value: np.ndarray
    real_value: np.ndarray
    reason: np.ndarray           # '' for accepted, else one of REJECTIONS


def judge(rollouts: dict[str, np.ndarray], branch: np.ndarray, data: RealData, values: ValueFunctions,
          kappa: float, config: AugmentConfig) -> Judgement:
    """Cut each rollout before its first untrusted step (U > kappa, or non-finite) and after its first predicted
    termination, then accept it if it is long enough, did not terminate, and beats the real continuation."""
    length_limit = config.rollout_length
    trusted = (rollouts["uncertainty"] <= kappa) & np.isfinite(rollouts["next_observations"]).all(-1)
    trusted &= np.isfinite(rollouts["rewards"])
    first_untrusted = np.where(trusted.all(1), length_limit, np.argmin(trusted, axis=1))
    dones = rollouts["terminals"].astype(bool)
    first_done = np.where(dones.any(1), np.argmax(dones, axis=1), length_limit)
    terminated = first_done < first_untrusted
    lengths = np.where(terminated, first_done + 1, first_untrusted)

    offsets = np.arange(length_limit)
    kept = offsets < lengths[:, None]
    rewards = np.where(kept, values.gamma ** offsets * values.scale(rollouts["rewards"].astype(np.float64)), 0.0)
    end_value = np.take_along_axis(rollouts["next_values"], np.maximum(lengths - 1, 0)[:, None], 1)[:, 0]
    imagined = rewards.sum(1) + values.gamma ** lengths * np.where(terminated, 0.0, end_value)
    imagined = np.where(lengths > 0, imagined, -np.inf)
    real = continuation_values(data, branch, np.maximum(lengths, 1), values.gamma)

    reason = np.full(len(branch), "", dtype=object)
    reason[imagined <= real] = "not_better"
    reason[terminated & (config.reject_terminated | (lengths < config.min_rollout_length))] = "termination"
    reason[~terminated & (lengths < config.min_rollout_length)] = "uncertainty"
    return Judgement(lengths, terminated, imagined, real, reason)
