"""SAC (Haarnoja et al. 2018) — the online behaviour agent of the D4RL recipe (not an offline algorithm) — and its
training loop, which stops at the medium threshold and resumes from checkpoints.

2x256 ReLU tanh-Gaussian actor, twin critics, automatically tuned entropy temperature (target entropy -|A|),
Adam 3e-4, gamma 0.99, Polyak 0.005, batch 256 — D4RL's behaviour-policy settings.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ipdrl import envs
from ipdrl.data.dataset import Dataset
from ipdrl.data.generator.config import GenerateConfig
from ipdrl.data.generator.recorder import Recorder
from ipdrl.evaluation import evaluate, stateless_policy
from ipdrl.networks import EnsembleCritic, TanhGaussianActor, polyak, tanh_gaussian_sample
from ipdrl.optim import gradient_step
from ipdrl.storage import atomic_write_bytes


@dataclasses.dataclass
class SACConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    init_temperature: float = 1.0


def _networks(config: SACConfig, act_dim: int) -> tuple[TanhGaussianActor, EnsembleCritic]:
    return TanhGaussianActor(act_dim, config.hidden_dims), EnsembleCritic(config.hidden_dims, num=2)


def init(config: SACConfig, obs_dim: int, act_dim: int, key: jax.Array) -> dict:
    actor, critic = _networks(config, act_dim)
    actor_key, critic_key = jax.random.split(key)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    actor_params = actor.init(actor_key, obs)
    critic_params = critic.init(critic_key, obs, act)
    log_alpha = jnp.log(jnp.asarray(config.init_temperature, jnp.float32))
    opt = optax.adam(config.lr)
    return {
        "actor": actor_params,
        "critic": critic_params,
        "critic_target": jax.tree_util.tree_map(jnp.array, critic_params),
        "log_alpha": log_alpha,
        "actor_opt": opt.init(actor_params),
        "critic_opt": opt.init(critic_params),
        "alpha_opt": opt.init(log_alpha),
    }


def update(config: SACConfig, act_dim: int, state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
    """One SAC update (critic, actor, temperature, target). Pure; jit it with config and act_dim static."""
    actor, critic = _networks(config, act_dim)
    opt = optax.adam(config.lr)
    next_key, pi_key = jax.random.split(key)
    alpha = jnp.exp(state["log_alpha"])

    next_action, next_log_prob = tanh_gaussian_sample(*actor.apply(state["actor"], batch["next_observations"]), next_key)
    next_q = critic.apply(state["critic_target"], batch["next_observations"], next_action).min(0)
    target = batch["rewards"] + config.discount * (1.0 - batch["dones"]) * (next_q - alpha * next_log_prob)

    def critic_loss_fn(params):
        q = critic.apply(params, batch["observations"], batch["actions"])
        return ((q - target) ** 2).mean(1).sum(0)

    critic_step = gradient_step(critic_loss_fn, opt, state["critic"], state["critic_opt"])
    critic_params = critic_step.params

    def actor_loss_fn(params):
        action, log_prob = tanh_gaussian_sample(*actor.apply(params, batch["observations"]), pi_key)
        q = critic.apply(critic_params, batch["observations"], action).min(0)
        return (alpha * log_prob - q).mean(), log_prob

    actor_step = gradient_step(actor_loss_fn, opt, state["actor"], state["actor_opt"], has_aux=True)
    entropy_gap = jax.lax.stop_gradient(-actor_step.aux.mean() - (-act_dim))
    alpha_step = gradient_step(lambda log_a: log_a * entropy_gap, opt, state["log_alpha"], state["alpha_opt"])

    new_state = dict(
        state,
        actor=actor_step.params,
        critic=critic_params,
        critic_target=polyak(state["critic_target"], critic_params, config.tau),
        log_alpha=alpha_step.params,
        actor_opt=actor_step.opt_state,
        critic_opt=critic_step.opt_state,
        alpha_opt=alpha_step.opt_state,
    )
    return new_state, {"critic_loss": critic_step.loss, "actor_loss": actor_step.loss, "alpha": alpha}


def sample_action(config: SACConfig, act_dim: int, actor_params: dict, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic action (the behaviour policy that collects medium/expert data)."""
    actor, _ = _networks(config, act_dim)
    action, _ = tanh_gaussian_sample(*actor.apply(actor_params, obs), key)
    return action


def deterministic_action(config: SACConfig, act_dim: int, actor_params: dict, obs: jax.Array) -> jax.Array:
    """tanh(mean): used for the threshold evaluations."""
    actor, _ = _networks(config, act_dim)
    mean, _ = actor.apply(actor_params, obs)
    return jnp.tanh(mean)


# ---- training with a resumable replay buffer ------------------------------------------------------------------
@dataclasses.dataclass
class TrainingOutcome:
    state: dict
    replay: Dataset
    medium_policy: dict | None
    reached_at: int | None
    evaluations: list[tuple[int, float]]


class SACTrainer:
    """SAC on ``env_id``, stopping at the medium threshold (and optionally continuing to ``expert_steps``).

    Evaluations score the deterministic policy's mean return, or with ``score_info`` the mean per-episode total of
    that info key (AntGoal's controller: goals reached, which its return hides under the healthy reward); each is
    also a line of ``evaluations.log`` in the work directory."""

    def __init__(self, config: GenerateConfig, work_dir: Path, score_info: str | None = None):
        self.config, self.work_dir, self.score_info = config, work_dir, score_info
        probe = envs.make_env(config.env)
        self.obs_dim, self.act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
        probe.close()
        self.sac = SACConfig(hidden_dims=config.hidden_dims, batch_size=config.batch_size)
        act_dim, sac_config = self.act_dim, self.sac
        self._sample = jax.jit(lambda params, obs, key: sample_action(sac_config, act_dim, params, obs, key))

        def chunk(state, batches, key):
            def body(state, inputs):
                batch, step_key = inputs
                return update(sac_config, act_dim, state, batch, step_key)
            keys = jax.random.split(key, batches["rewards"].shape[0])
            return jax.lax.scan(body, state, (batches, keys))

        self._chunk = jax.jit(chunk)
        self.base_key = jax.random.PRNGKey(config.seed)

    def policy_action(self, params: dict, obs: np.ndarray, step: int) -> np.ndarray:
        key = jax.random.fold_in(jax.random.fold_in(self.base_key, 1), step)
        return np.asarray(self._sample(params, jnp.asarray(obs[None], jnp.float32), key)[0])

    def evaluate(self, params: dict, step: int) -> float:
        """The deterministic policy's score over ``eval_episodes`` (eval env seeds apart from training resets)."""
        policy = stateless_policy(lambda actor, obs, key: deterministic_action(self.sac, self.act_dim, actor, obs))
        seed = 10**9 + self.config.seed * 1000
        result = evaluate(policy, params, self.config.env, self.config.eval_episodes, seed,
                          info_totals=(self.score_info,) if self.score_info else ())
        scores = {"return": result["return_mean"], **result.get("info_totals", {})}
        # appended: a resumed run repeats the evaluations made after its last checkpoint
        with open(self.work_dir / "evaluations.log", "a") as log:
            log.write(f"step {step} " + " ".join(f"{name} {value:.2f}" for name, value in scores.items()) + "\n")
        return scores[self.score_info or "return"]

    # -- checkpoints at update-chunk boundaries, with the simulator state to continue mid-episode --
    # One file holds the replay buffer, the SAC state, the medium policy and the progress, so that a kill can never
    # pair a buffer with another step; progress.json repeats the progress for reading.
    def _save(self, state: dict, recorder: Recorder, step: int, rng: np.random.Generator, evaluations, medium, reached):
        meta = {"step": step, "episode": recorder.episode, "env_state": recorder.snapshot(),
                "rng": rng.bit_generator.state,
                "evaluations": evaluations, "reached_at": reached, "config": dataclasses.asdict(self.config)}
        as_bytes = lambda data: np.frombuffer(data, np.uint8)
        extra = {"meta": as_bytes(json.dumps(meta).encode()),
                 "sac": as_bytes(flax.serialization.to_bytes(jax.device_get(state)))}
        if medium is not None:
            extra["medium_policy"] = as_bytes(flax.serialization.to_bytes(jax.device_get(medium)))
        buffer = io.BytesIO()
        np.savez(buffer, **recorder.columns(), **{f"_{k}": v for k, v in extra.items()})
        atomic_write_bytes(self.work_dir / CHECKPOINT, buffer.getvalue())
        atomic_write_bytes(self.work_dir / "progress.json", json.dumps(meta).encode())

    def _load(self, template: dict):
        with np.load(self.work_dir / CHECKPOINT) as saved:
            arrays = {k: saved[k] for k in saved.files}
        meta = json.loads(arrays.pop("_meta").tobytes())
        mine = json.loads(json.dumps(dataclasses.asdict(self.config)))
        changed = sorted(k for k in mine if meta["config"].get(k) != mine[k] and k not in _RESUME_FREE)
        if changed:
            raise ValueError(f"cannot resume from {self.work_dir}: settings differ in {changed}. Use the same "
                             f"settings, or delete the work directory to start over.")
        state = flax.serialization.from_bytes(template, arrays.pop("_sac").tobytes())
        medium = arrays.pop("_medium_policy", None)
        if medium is not None:
            medium = flax.serialization.from_bytes(template["actor"], medium.tobytes())
        return state, meta, medium, arrays

    def train(self, stop_at_threshold: bool, total_steps: int, threshold: float | None) -> TrainingOutcome:
        config = self.config
        state = init(self.sac, self.obs_dim, self.act_dim, jax.random.fold_in(self.base_key, 0))
        rng = np.random.default_rng(config.seed)
        recorder = Recorder(config.env, config.seed)
        step, evaluations, medium, reached = 0, [], None, None
        if not config.resume and (self.work_dir / CHECKPOINT).exists():
            done = json.loads((self.work_dir / "progress.json").read_text())["step"]
            raise FileExistsError(f"{self.work_dir} holds SAC training at step {done}: pass --resume to continue it, "
                                  f"or another --work-dir (or delete this one) to start over.")
        if config.resume and (self.work_dir / CHECKPOINT).exists():
            state, meta, medium, columns = self._load(state)
            recorder = Recorder(config.env, config.seed, episode=meta["episode"])
            recorder.restore(columns)
            recorder.resume_from(meta["env_state"])
            rng.bit_generator.state = meta["rng"]
            step, evaluations, reached = meta["step"], [tuple(e) for e in meta["evaluations"]], meta["reached_at"]
        self.work_dir.mkdir(parents=True, exist_ok=True)
        last_checkpoint = step
        goal = f" (medium at eval >= {threshold:g})" if threshold is not None else ""
        bar = tqdm(total=total_steps, initial=step, desc=f"SAC {config.env}{goal}", unit="step",
                   disable=not config.progress)
        while step < total_steps and not (stop_at_threshold and reached is not None):
            for _ in range(config.updates_every):
                if step < config.start_steps:
                    action = rng.uniform(-1, 1, self.act_dim).astype(np.float32)
                else:
                    action = self.policy_action(state["actor"], recorder.obs, step)
                recorder.step(action)
                step += 1
                if step % config.eval_every == 0 and step >= config.start_steps:
                    score = self.evaluate(state["actor"], step)
                    evaluations.append((step, score))
                    bar.set_postfix({f"eval_{self.score_info or 'return'}": f"{score:.4g}"})
                    if threshold is not None and reached is None and score >= threshold:
                        reached, medium = step, jax.tree_util.tree_map(jnp.array, state["actor"])
                        break
            if step >= config.start_steps // 2 and not (stop_at_threshold and reached is not None):
                index = rng.integers(0, recorder.size, (config.updates_every, config.batch_size))
                columns = recorder.columns()
                batches = {key: columns[source][index].astype(np.float32) for key, source in _BATCH_COLUMNS.items()}
                batches["actions"] = recorder.bounds.to_policy(batches["actions"])  # SAC learns in [-1, 1]
                state, _ = self._chunk(state, batches, jax.random.fold_in(jax.random.fold_in(self.base_key, 2), step))
            if step - last_checkpoint >= config.checkpoint_every and recorder.snapshot() is not None:
                self._save(state, recorder, step, rng, evaluations, medium, reached)
                last_checkpoint = step
            bar.update(step - bar.n)
        bar.close()
        replay = recorder.dataset(f"{config.env}-replay", {})
        if stop_at_threshold and reached is None:
            best = max((score for _, score in evaluations), default=float("nan"))
            raise ValueError(
                f"SAC on {config.env} did not reach the threshold {threshold:.0f} within {total_steps} steps (best "
                f"deterministic return {best:.0f}). Lower --threshold or raise --max-sac-steps (training resumes "
                f"with --resume)."
            )
        self._save(state, recorder, step, rng, evaluations, medium, reached)
        return TrainingOutcome(state, replay, medium, reached, evaluations)


CHECKPOINT = "checkpoint.npz"
# Settings that only say when to stop or where to write: a resumed run may change them.
_RESUME_FREE = {"resume", "progress", "output", "level", "threshold", "max_sac_steps", "expert_steps", "transitions",
                "work_dir"}

_BATCH_COLUMNS = {"observations": "observations", "actions": "actions", "rewards": "rewards",
                  "next_observations": "next_observations", "dones": "terminals"}
