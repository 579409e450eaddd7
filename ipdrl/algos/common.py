"""Pieces the single-learner algorithms share: optimisers, the MLP policy, the learner assembly, and the
:class:`~ipdrl.algos.Algorithm` built from a ``make_learner``."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import optax

from ipdrl.algos import Algorithm, register
from ipdrl.data.dataset import Dataset, sample_transitions
from ipdrl.data.statistics import normalize
from ipdrl.evaluation import Policy, stateless_policy
from ipdrl.runs import Run
from ipdrl.training import Learner, evaluate_final, train_in_run, train_seeds_in_runs


def adam(learning_rate: float, decay_steps: int | None = None, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam (AdamW if ``weight_decay``), with cosine decay over ``decay_steps`` when given (IQL's actor)."""
    lr = optax.cosine_decay_schedule(learning_rate, decay_steps) if decay_steps else learning_rate
    return optax.adamw(lr, weight_decay=weight_decay) if weight_decay else optax.adam(lr)


def actor_policy_params(state: Mapping[str, Any]) -> dict[str, Any]:
    """What an MLP policy acts with: the actor's parameters and the observation statistics."""
    return {"actor": state["actor"], "obs_stats": state["obs_stats"]}


def mlp_policy(act: Callable[[Any, jax.Array], jax.Array]) -> Policy:
    """The acting policy of an actor ``act(actor_params, normalised_obs) -> actions``; params as
    :func:`actor_policy_params` gives them."""
    return stateless_policy(lambda params, obs, key: act(params["actor"], normalize(obs, params["obs_stats"])))


def transition_learner(fields: Mapping[str, Any], init: Callable, update: Callable, batch_size: int,
                       policy: Policy) -> Learner:
    """A learner on uniform batches of transitions whose policy is an MLP actor (BC, IQL, TD3+BC, ReBRAC)."""
    return Learner(fields=dict(fields), init=init, update=update,
                   sample=lambda fields, key: sample_transitions(fields, key, batch_size),
                   policy=policy, policy_params=actor_policy_params)


def learner_algorithm(name: str, config_class: type, make_learner: Callable[[Any, Dataset], Learner],
                      summary: str, budgets: Mapping | None = None, presets: Mapping | None = None) -> Algorithm:
    """Register the algorithm that trains ``make_learner(config, dataset)`` in a run and evaluates its final
    checkpoint."""

    def train(config: Any, dataset: Dataset, run: Run, env_id: str) -> dict[str, Any]:
        learner = make_learner(config, dataset)
        state = train_in_run(learner, config, config, run, env_id, dataset.reference())
        return evaluate_final(learner, state, config, env_id, dataset.reference())

    def evaluate(config: Any, dataset: Dataset, run: Run, env_id: str) -> dict[str, Any]:
        learner = make_learner(config, dataset)
        if not run.has_checkpoint():
            raise FileNotFoundError(f"{run.path} has no checkpoint yet: train it first (or --resume it).")
        state, step = run.load_checkpoint(learner.init(jax.random.PRNGKey(config.seed)))
        return {**evaluate_final(learner, state, config, env_id, dataset.reference()), "step": step}

    def train_seeds(configs: list, dataset: Dataset, runs: list[Run], env_id: str, batching: str) -> list[dict]:
        learner = make_learner(configs[0], dataset)  # the configs differ only in their seeds and run directories
        states = train_seeds_in_runs(learner, configs[0], configs, runs, env_id, dataset.reference(), batching)
        return [evaluate_final(learner, state, config, env_id, dataset.reference())
                for state, config in zip(states, configs)]

    return register(Algorithm(name=name, Config=config_class, train=train, evaluate=evaluate, summary=summary,
                              budgets=budgets or {}, presets=presets or {}, train_seeds=train_seeds))
