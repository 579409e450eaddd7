"""IPD stage 3: find sub-optimal states in a dataset and add MPC-planned imagined continuations from them.

1. Sub-optimality of every dataset state (n-step, clipped at the episode end, in V's units):
       delta_t = V(s_t) - [sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n})]
   Branch points: the top ``branch_fraction`` of each trajectory by delta (delta > 0), or every state with
   delta > ``branch_threshold``; tried in order of decreasing delta.
2. From a batch of branch points at once, a receding-horizon rollout of length L in the ensemble model: at each
   step :func:`ipdrl.planning.plan` (MPPI, warm-started from the previous plan) picks the action (``greedy-q``
   mode: argmax Q over sampled policy actions instead). The rollout is cut before the first step with
   U(s, a) > kappa and after a predicted termination.
3. Acceptance: the imagined value ``sum_{k<l} gamma^k r_k + gamma^l V(s_l)`` must beat the real continuation
   from the same state over the same l steps. Rejections are counted by reason: 'uncertainty' (cut shorter than
   ``min_rollout_length``), 'termination' (predicted to terminate) or 'not_better'.
4. Every accepted segment becomes a new episode: the ``prefix_length`` real steps before the branch point, then
   the imagined steps. ``D_aug = D + new episodes``, until the imagined transitions reach ``ratio`` times the
   real ones (more passes with fresh randomness when one pass over the branch points is not enough).

Rewards, observations and actions of ``D_aug`` are in raw env units like the data. Its ``infos`` hold, for every
transition, ``return_to_go`` (discounted, scaled-reward units, bootstrapped with V where an episode ends without
termination), ``timesteps`` (position in the original episode) and ``imagined``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ipdrl import planning
from ipdrl.config import config_from_json
from ipdrl.data.dataset import Dataset, concatenate
from ipdrl.planning import PlannerConfig
from ipdrl.runs import atomic_write_bytes
from ipdrl.world_models import ensemble
from ipdrl.world_models.ensemble import EnsembleConfig, EnsembleModel, map_batches

log = logging.getLogger("ipdrl")

MODES = ("mpc", "greedy-q")
REJECTIONS = ("uncertainty", "termination", "not_better")


class ValueFunctions(NamedTuple):
    """What augmentation needs from the stage-1 value learner; all in scaled-reward units."""

    q: Callable[[jax.Array, jax.Array], jax.Array]
    """min twin target Q(s, a)."""
    v: Callable[[jax.Array], jax.Array]
    policy: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
    """AWR policy (mean, log_std): the MPC proposal prior."""
    gamma: float
    reward_scale: float
    reward_shift: float
    """Scaled reward: ``r * reward_scale + reward_shift``."""

    def scale(self, rewards: Any) -> Any:
        return rewards * self.reward_scale + self.reward_shift


def from_iql(iql_config: Any, iql_state: dict, act_dim: int) -> ValueFunctions:
    """:class:`ValueFunctions` of a trained IQL state (``ipdrl.algos.iql``)."""
    from ipdrl.algos import iql

    state = {k: iql_state[k] for k in ("critic_target", "value", "actor", "obs_stats")}
    scale, shift = (float(x) for x in np.asarray(iql_state["reward_scale"]))
    return ValueFunctions(
        q=functools.partial(iql.q_value, iql_config, state),
        v=functools.partial(iql.value, iql_config, state),
        policy=lambda obs: iql.awr_distribution(iql_config, state, obs, act_dim),
        gamma=float(iql_config.discount),
        reward_scale=scale,
        reward_shift=shift,
    )


@dataclasses.dataclass(frozen=True)
class AugmentConfig(PlannerConfig):
    """Imaginary augmentation settings (the MPC planner's settings above them)."""

    mode: Literal["mpc", "greedy-q"] = "mpc"
    """'mpc' (MPPI in the model) or 'greedy-q' (the paper's ablation: argmax Q over sampled actions, no lookahead)."""
    ratio: float = 0.25
    """Target imagined : real transitions (imagined steps only; real prefixes copied into new episodes not counted)."""
    rollout_length: int = 20
    """L: the most imagined steps per segment."""
    min_rollout_length: int = 5
    """Segments cut shorter than this by uncertainty or termination are rejected."""
    prefix_length: int = 20
    """Real steps copied before each imagined segment (the sequence policy's context length K)."""
    suboptimality_steps: int = 10
    """n of the n-step sub-optimality delta_t."""
    branch_fraction: float = 0.1
    """Share of each trajectory's states (highest delta, delta > 0) used as branch points."""
    branch_threshold: float | None = None
    """Instead of branch_fraction: every state with delta above this value (V's units) is a branch point."""
    max_passes: int = 3
    """Rollouts per branch point at most: further passes (fresh randomness) run while the target is not reached."""
    branch_batch: int = 256
    """Branch points rolled out together in one jitted call."""
    uncertainty: Literal["gjs", "disagreement"] = "disagreement"
    """'disagreement' (largest std of the elites' means) or 'gjs' (mean pairwise geometric Jensen-Shannon, MACURA).
    Measured on hopper-medium-replay (benchmarks/model_faithfulness.py), disagreement tracks the model's error
    (rank correlation with the held-out one-step error +0.64, and cutting at kappa halves the per-step return
    error of imagined MPC rollouts replayed in the real env), while GJS, which measures disagreement in units of
    the predicted noise, is dominated by near-deterministic state dimensions and anti-correlates (-0.52)."""
    kappa_quantile: float = 0.9
    """kappa = this quantile of U over the dataset's own (s, a) pairs."""
    kappa: float | None = None
    """Fixed uncertainty threshold instead of the calibrated quantile."""
    reject_terminated: bool = True
    """Reject segments that end in a predicted termination (a near-optimal replacement should not fall over)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"unknown augmentation mode {self.mode!r}: use one of {', '.join(MODES)}.")
        if self.uncertainty not in ("gjs", "disagreement"):
            raise ValueError(f"unknown uncertainty {self.uncertainty!r}: use 'gjs' or 'disagreement'.")
        if self.ratio < 0 or not 1 <= self.min_rollout_length <= self.rollout_length:
            raise ValueError(f"need ratio >= 0 and 1 <= min_rollout_length <= rollout_length; got ratio={self.ratio}, "
                             f"min_rollout_length={self.min_rollout_length}, rollout_length={self.rollout_length}.")
        if not 0.0 < self.branch_fraction <= 1.0:
            raise ValueError(f"branch_fraction must be in (0, 1], got {self.branch_fraction}.")


# 'cpu' is sized so that `ipdrl augment --budget cpu` of a whole shared dataset takes minutes on a 2-core CPU:
# on hopper-medium-replay (230k transitions) the planner simulates ~300 imagined steps/s there and about 14% of
# them end up in accepted segments (short segments: most rollouts from the most sub-optimal states leave the
# model's confident region within a few steps), so ratio 0.05 needs ~80k simulated steps, about 5 minutes (see
# benchmarks/imagination.py). 'paper' keeps the spec's defaults (N 256, H 5, 3 iterations, L 20).
BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_samples=16, horizon=3, iterations=2, num_elites=4, rollout_length=6, min_rollout_length=2,
                 prefix_length=5, branch_batch=16, ratio=0.05, max_passes=1),
    "cpu": dict(num_samples=64, horizon=5, iterations=2, num_elites=8, rollout_length=10, min_rollout_length=3,
                branch_batch=256, ratio=0.05, max_passes=1),
    "paper": dict(),
}


# ---- values of the real data ----------------------------------------------------------------------------
def _discounted_to_go(rewards: np.ndarray, bootstrap: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                      gamma: float) -> np.ndarray:
    """Per-transition ``sum_k gamma^k r_{t+k} + gamma^(end-t) bootstrap[episode]``, all episodes at once."""
    out = np.zeros(len(rewards), np.float64)
    lengths = ends - starts
    acc = bootstrap.astype(np.float64)
    for back in range(1, int(lengths.max()) + 1):  # one vectorised step per position from the end
        live = lengths >= back
        index = ends[live] - back
        acc[live] = rewards[index] + gamma * acc[live]
        out[index] = acc[live]
    return out


def return_labels(dataset: Dataset, values: ValueFunctions) -> np.ndarray:
    """Discounted return-to-go of every transition in V's units, bootstrapped with gamma^k V(s_end) where an
    episode ends without termination (timeouts, cut episodes, imagined segments). float32, shape (N,)."""
    ends = dataset.episode_ends
    last = ends - 1
    end_values = map_batches(values.v, dataset.next_observations[last])
    bootstrap = end_values * (1.0 - dataset.terminals[last])
    rewards = values.scale(dataset.rewards.astype(np.float64))
    return _discounted_to_go(rewards, bootstrap, dataset.episode_starts, ends, values.gamma).astype(np.float32)


class RealData(NamedTuple):
    """What continuation values of the real data need, precomputed once."""

    rewards: np.ndarray        # scaled
    next_values: np.ndarray    # V(s'_t)
    terminals: np.ndarray
    episode_end: np.ndarray    # exclusive end of each transition's episode


def real_data(dataset: Dataset, values: ValueFunctions) -> RealData:
    return RealData(
        rewards=values.scale(dataset.rewards.astype(np.float64)),
        next_values=map_batches(values.v, dataset.next_observations).astype(np.float64),
        terminals=dataset.terminals,
        episode_end=np.repeat(dataset.episode_ends, dataset.episode_lengths()),
    )


def continuation_values(data: RealData, index: np.ndarray, steps: np.ndarray, gamma: float) -> np.ndarray:
    """What the data did from ``index`` over ``steps`` steps (clipped at the episode end) plus the bootstrap:
    ``sum_{k<l} gamma^k r_{t+k} + gamma^l V(s_{t+l})`` with V = 0 after a terminal."""
    steps = np.minimum(steps, data.episode_end[index] - index)
    offsets = np.arange(int(steps.max()))
    window = np.minimum(index[:, None] + offsets, len(data.rewards) - 1)
    discounted = np.where(offsets < steps[:, None], gamma ** offsets * data.rewards[window], 0.0).sum(1)
    last = index + steps - 1
    return discounted + gamma ** steps * data.next_values[last] * (1.0 - data.terminals[last])


def suboptimality(dataset: Dataset, values: ValueFunctions, data: RealData, steps: int) -> np.ndarray:
    """delta_t = V(s_t) - (n-step continuation value of the data) for every transition."""
    state_values = map_batches(values.v, dataset.observations).astype(np.float64)
    index = np.arange(dataset.size)
    return state_values - continuation_values(data, index, np.full(dataset.size, steps), values.gamma)


def branch_candidates(dataset: Dataset, delta: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """Branch-point indices, highest delta first."""
    if config.branch_threshold is not None:
        chosen = np.flatnonzero(delta > config.branch_threshold)
    else:
        episode = dataset.episode_index()
        order = np.lexsort((-delta, episode))  # by episode, then decreasing delta
        rank = np.empty(dataset.size, np.int64)
        rank[order] = np.arange(dataset.size) - np.repeat(dataset.episode_starts, dataset.episode_lengths())
        quota = np.ceil(config.branch_fraction * dataset.episode_lengths())[episode]
        chosen = np.flatnonzero((rank < quota) & (delta > 0))
    return chosen[np.argsort(-delta[chosen], kind="stable")]


# ---- imagined rollouts ----------------------------------------------------------------------------------
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
            action = planning.greedy_q_action(obs, key, values.q, values.policy, planner.num_samples,
                                              planner.proposal_noise)
            return action, warm
        plan = planning.plan(obs, warm, key, planner_step, values.v, values.policy, values.gamma, planner)
        return plan[:, 0], planning.shift_plan(plan)

    def body(carry, keys):
        obs, warm = carry
        actions, warm = choose(obs, warm, keys[0])
        next_obs, rewards, dones, u = ensemble.imagine_step(model, obs, actions, keys[1], kind)
        out = {"observations": obs, "actions": actions, "rewards": rewards, "next_observations": next_obs,
               "terminals": dones, "uncertainty": u, "next_values": values.v(next_obs)}
        return (next_obs, warm), out

    warm = planning.policy_warm_start(start_obs, values.policy, planner.horizon)
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


# ---- building the augmented dataset ---------------------------------------------------------------------
def _timesteps(dataset: Dataset) -> np.ndarray:
    """Position in the original episode: kept from a previous augmentation, else counted."""
    return np.asarray(dataset.infos.get("timesteps", dataset.timesteps()), np.int32)


def _new_episodes(dataset: Dataset, segments: list[dict[str, np.ndarray]], prefix_length: int) -> Dataset:
    """One episode per accepted segment: the real prefix ending at the branch point, then the imagined steps."""
    timesteps = _timesteps(dataset)
    episode_start = np.repeat(dataset.episode_starts, dataset.episode_lengths())
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                                                          "terminals", "timeouts", "timesteps", "imagined")}
    info_parts: dict[str, list[np.ndarray]] = {k: [] for k in dataset.infos}
    for segment in segments:
        t, length = segment["branch"], segment["length"]
        prefix = np.arange(max(episode_start[t], t - prefix_length), t)
        for key in ("observations", "actions", "rewards", "next_observations"):
            parts[key].append(np.concatenate([getattr(dataset, key)[prefix], segment[key][:length]]).astype(np.float32))
        terminals = np.zeros(len(prefix) + length, bool)
        terminals[-1] = segment["terminated"]
        parts["terminals"].append(terminals)
        parts["timeouts"].append(np.append(np.zeros(len(prefix) + length - 1, bool), not segment["terminated"]))
        parts["timesteps"].append(np.concatenate([timesteps[prefix], timesteps[t] + np.arange(length)]))
        parts["imagined"].append(np.concatenate([np.zeros(len(prefix), bool), np.ones(length, bool)]))
        for key, array in dataset.infos.items():
            unknown = np.full((length, *array.shape[1:]), np.nan if array.dtype.kind == "f" else 0, array.dtype)
            info_parts[key].append(np.concatenate([array[prefix], unknown]))
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    infos = {k: np.concatenate(v) for k, v in info_parts.items()}
    infos.update(timesteps=joined.pop("timesteps").astype(np.int32), imagined=joined.pop("imagined"))
    return Dataset(**joined, infos=infos, metadata=dict(dataset.metadata), name=dataset.name)


def imagined_steps(dataset: Dataset) -> np.ndarray:
    """Per transition: is it imagined? (All False for data that was never augmented.)"""
    return np.asarray(dataset.infos.get("imagined", np.zeros(dataset.size, bool)), bool)


def added_episodes(dataset: Dataset) -> np.ndarray:
    """Per transition: does it belong to an episode that augmentation added (one with imagined steps)?"""
    episode = dataset.episode_index()
    return (np.bincount(episode, weights=imagined_steps(dataset), minlength=dataset.num_episodes) > 0)[episode]


def copied_prefixes(dataset: Dataset) -> np.ndarray:
    """The real steps copied in front of imagined segments: the non-imagined steps of added episodes."""
    return added_episodes(dataset) & ~imagined_steps(dataset)


class Progress(NamedTuple):
    """How far :func:`augment`'s batch loop got, in whole batches: saved while it runs, so an interrupted
    augmentation resumes, and kept when it ends, so one with another ratio continues from it."""

    signature: dict            # what the batches depend on; a saved progress with another signature is not used
    batches_done: int          # batches of branch points rolled out, counted across passes
    segments: list             # every segment those batches accepted, in order (the target cuts the result only)
    tried: list                # a Judgement per batch done
    seconds: float             # time spent in earlier attempts


def _progress_signature(config: AugmentConfig, seed: int, dataset: Dataset, kappa: float, candidates: np.ndarray,
                        model: EnsembleModel) -> dict:
    """What the batches depend on (not the ratio or the number of passes, which only say when to stop): the branch
    points stand for the data and V; the model's weights are hashed."""
    digest = hashlib.sha256(candidates.tobytes())
    for leaf in jax.tree_util.tree_leaves(model["params"]):
        digest.update(np.asarray(leaf).tobytes())
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("ratio", "max_passes")}
    return {"config": settings, "seed": seed, "size": dataset.size, "kappa": kappa, "inputs": digest.hexdigest()}


def _load_progress(path: Path, signature: dict, warn: bool) -> Progress | None:
    try:
        saved = pickle.loads(path.read_bytes())
    except Exception as error:  # noqa: BLE001 -- any unreadable file means: start over
        if warn:
            log.warning("augment: ignoring unreadable progress file %s (%s); starting over", path, error)
        return None
    if not isinstance(saved, Progress) or saved.signature != signature:
        if warn:
            log.warning("augment: %s was saved for other settings or data; starting over", path)
        return None
    return saved


def _starting_point(progress_file: Path | None, others: Sequence[Path], signature: dict) -> Progress | None:
    """The run's own saved progress, else the furthest of ``others`` (augmentations of the same inputs with another
    ratio or number of passes): their batches are this run's first batches."""
    if progress_file is not None and progress_file.exists():
        saved = _load_progress(progress_file, signature, warn=True)
        if saved is not None:
            log.info("augment: resuming from %s (%d batches done)", progress_file, saved.batches_done)
            return saved
    found = [(saved, path) for path in others if path.exists() and path != progress_file
             for saved in [_load_progress(path, signature, warn=False)] if saved is not None]
    if not found:
        return None
    saved, path = max(found, key=lambda pair: pair[0].batches_done)
    log.info("augment: continuing from %s, the same batches for another ratio (%d batches done)", path,
             saved.batches_done)
    return saved


def _cut(segments: list[dict], tried: list[Judgement], target: int, batches: int
         ) -> tuple[list[dict], list[Judgement]]:
    """The accepted segments and tried batches of a run that stops after ``batches`` batches or at the first segment
    that brings the imagined transitions to ``target``, whichever comes first."""
    tried = tried[:batches]
    accepted_so_far = np.cumsum([int((verdict.reason == "").sum()) for verdict in tried], dtype=int)
    segments = segments[:int(accepted_so_far[-1]) if len(tried) else 0]
    reached = np.cumsum([segment["length"] for segment in segments]) >= target
    if not reached.any():
        return segments, tried
    keep = int(np.argmax(reached)) + 1
    return segments[:keep], tried[:int(np.argmax(accepted_so_far >= keep)) + 1]


def augment(dataset: Dataset, values: ValueFunctions, model: EnsembleModel, config: AugmentConfig, seed: int,
            progress: bool = True, progress_file: Path | None = None, save_every_seconds: float = 60.0,
            other_progress_files: Sequence[Path] = ()) -> tuple[Dataset, dict]:
    """``D_aug = dataset + accepted imagined episodes``, and a report (see the module docstring).

    With ``progress_file``, the batches done so far are saved there (atomically, every ``save_every_seconds``, and
    once more at the end) and a call with the same inputs resumes from it; the result equals an uninterrupted
    call's, since every batch's randomness depends only on (seed, pass, batch). A call without a progress of its
    own starts from the furthest of ``other_progress_files`` saved for the same inputs and another ratio or number
    of passes: a ratio sweep rolls out each batch once.
    """
    started = time.perf_counter()
    model_obs_dim = int(model["stats"]["input_mean"].shape[-1]) - dataset.act_dim
    if model_obs_dim != dataset.obs_dim:
        raise ValueError(f"the world model was trained on observations of dim {model_obs_dim} (with actions of this "
                         f"dataset's dim), but dataset {dataset.name!r} has {dataset.obs_dim}; train it on this dataset.")
    data = real_data(dataset, values)
    delta = suboptimality(dataset, values, data, config.suboptimality_steps)
    candidates = branch_candidates(dataset, delta, config)
    if config.kappa is not None:
        kappa, data_uncertainty = float(config.kappa), None
    else:
        kappa, data_uncertainty = ensemble.uncertainty_threshold(model, dataset.observations, dataset.actions,
                                                                 config.uncertainty, config.kappa_quantile)
    target = int(round(config.ratio * dataset.size))
    planner = PlannerConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(PlannerConfig)})
    rollout = functools.partial(imagined_rollouts, values=values, planner=planner, mode=config.mode,
                                length=config.rollout_length, kind=config.uncertainty)

    saving = progress_file is not None
    signature = _progress_signature(config, seed, dataset, kappa, candidates, model) if saving else {}
    saved = _starting_point(progress_file, other_progress_files, signature) if saving else None
    segments: list[dict[str, np.ndarray]] = saved.segments if saved else []
    tried: list[Judgement] = saved.tried if saved else []
    batches_done, earlier_seconds = (saved.batches_done, saved.seconds) if saved else (0, 0.0)
    imagined_count = sum(segment["length"] for segment in segments)

    def save() -> None:
        seconds = earlier_seconds + time.perf_counter() - started
        atomic_write_bytes(progress_file, pickle.dumps(Progress(signature, batches_done, segments, tried, seconds)))

    last_save = time.perf_counter()
    bar = tqdm(total=target, initial=min(imagined_count, target), desc="augment", unit="imagined",
               disable=not progress, dynamic_ncols=True)
    batch = config.branch_batch
    batches = [(pass_index, first) for pass_index in range(config.max_passes if target > 0 else 0)
               for first in range(0, len(candidates), batch)]
    for number, (pass_index, first) in enumerate(batches):
        if imagined_count >= target:
            break
        if number < batches_done:
            continue
        branch = candidates[first:first + batch]
        padded = np.append(branch, np.repeat(branch[-1], batch - len(branch)))  # one compiled batch size
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), pass_index), first)
        rollouts = {k: np.asarray(v)[: len(branch)]
                    for k, v in rollout(model, jnp.asarray(dataset.observations[padded]), key).items()}
        verdict = judge(rollouts, branch, data, values, kappa, config)
        tried.append(verdict)
        accepted = np.flatnonzero(verdict.reason == "")
        segments += [{"branch": branch[i], "length": int(verdict.lengths[i]), "terminated": bool(verdict.terminated[i]),
                      **{k: rollouts[k][i] for k in ("observations", "actions", "rewards", "next_observations")}}
                     for i in accepted]
        imagined_count += int(verdict.lengths[accepted].sum())
        bar.update(min(imagined_count, target) - bar.n)
        batches_done = number + 1
        if saving and time.perf_counter() - last_save >= save_every_seconds:
            save()
            last_save = time.perf_counter()
    bar.close()
    if saving and batches_done > (saved.batches_done if saved else 0):
        save()
    segments, tried = _cut(segments, tried, target, len(batches))
    imagined_count = sum(segment["length"] for segment in segments)
    simulated = sum(len(verdict.reason) for verdict in tried) * config.rollout_length

    base = dataset.replace(infos={**dataset.infos, "timesteps": _timesteps(dataset),
                                  "imagined": imagined_steps(dataset)})
    augmented = concatenate([base, _new_episodes(dataset, segments, config.prefix_length)]) if segments else base
    augmented = augmented.replace(infos={**augmented.infos, "return_to_go": return_labels(augmented, values)})
    seconds = earlier_seconds + time.perf_counter() - started
    report = _report(config, tried, segments, candidates, delta, kappa, data_uncertainty, dataset, augmented,
                     target, imagined_count, simulated, seconds)
    augmented = augmented.replace(metadata={**dataset.metadata, "augmentation": {
        k: v for k, v in report.items() if not isinstance(v, (list, dict))}})
    if imagined_count < target:
        log.warning("augment: the branch points ran out at imagined:real %.3f of the %.3f asked for (%d passes over "
                    "%d branch points); allow more passes (--augment.max-passes) or more branch points "
                    "(--augment.branch-fraction)", report["ratio_achieved"], config.ratio, config.max_passes,
                    len(candidates))
    log.info("augment: %d branch points, %d rollouts, %d accepted, imagined:real %.3f (target %.3f), kappa %.4g, "
             "%.0f imagined steps/s", report["branch_candidates"], report["rollouts"], report["accepted"],
             report["ratio_achieved"], config.ratio, kappa, report["imagined_steps_per_second"])
    return augmented, report


def _report(config: AugmentConfig, tried: list[Judgement], segments: list[dict], candidates: np.ndarray,
            delta: np.ndarray, kappa: float, data_uncertainty: np.ndarray | None, dataset: Dataset,
            augmented: Dataset, target: int, imagined_count: int, simulated: int, seconds: float) -> dict[str, Any]:
    nothing = Judgement(np.zeros(0, int), np.zeros(0, bool), np.zeros(0), np.zeros(0), np.zeros(0, object))
    joined = Judgement(*(np.concatenate(x) for x in zip(*tried))) if tried else nothing
    accepted = joined.reason == ""
    finite = np.isfinite(joined.imagined_value)
    mean = lambda x: float(np.mean(x)) if len(x) else None
    sample = np.random.default_rng(0).permutation(len(joined.reason))[:2000]  # enough points for the plots
    report: dict[str, Any] = {
        "mode": config.mode,
        "kappa": kappa,
        "kappa_quantile": None if config.kappa is not None else config.kappa_quantile,
        "uncertainty": config.uncertainty,
        "real_transitions": dataset.size,
        "branch_candidates": int(len(candidates)),
        "mean_suboptimality_of_candidates": mean(delta[candidates]),
        "rollouts": int(len(joined.reason)),
        "accepted": len(segments),
        "accepted_in_tried": int(accepted.sum()),
        "rejected": {reason: int((joined.reason == reason).sum()) for reason in REJECTIONS},
        "mean_imagined_value": mean(joined.imagined_value[finite]),
        "mean_real_value": mean(joined.real_value),
        "mean_imagined_value_accepted": mean(joined.imagined_value[accepted]),
        "mean_real_value_accepted": mean(joined.real_value[accepted]),
        "mean_segment_length": mean(joined.lengths),
        "target_imagined_transitions": target,
        "imagined_transitions": imagined_count,
        "new_transitions": augmented.size - dataset.size,
        "ratio_target": config.ratio,
        "ratio_achieved": imagined_count / dataset.size,
        "candidates_exhausted": imagined_count < target,
        "seconds": seconds,
        "imagined_steps_simulated": simulated,
        "imagined_steps_per_second": simulated / seconds if seconds > 0 else 0.0,
        "accepted_transitions_per_second": imagined_count / seconds if seconds > 0 else 0.0,
        "plot_data": {
            "imagined_value": [float(x) if np.isfinite(x) else None for x in joined.imagined_value[sample]],
            "real_value": joined.real_value[sample].tolist(),
            "reason": [str(r) for r in joined.reason[sample]],
        },
    }
    if data_uncertainty is not None:
        counts, edges = np.histogram(data_uncertainty, bins=50, range=(0.0, float(np.quantile(data_uncertainty, 0.99))))
        report["plot_data"]["uncertainty_histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
    return report


def plot_report(report: dict, path: Path) -> Path:
    """Uncertainty of the data with kappa, imagined vs real value per rollout, accepted/rejected counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report["plot_data"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    histogram = data.get("uncertainty_histogram")
    if histogram:
        edges = np.asarray(histogram["edges"])
        axes[0].stairs(histogram["counts"], edges, fill=True, alpha=0.6)
    axes[0].axvline(report["kappa"], color="red", label=f"kappa = {report['kappa']:.3g}")
    axes[0].set(title=f"U ({report['uncertainty']}) on the dataset's (s, a)", xlabel="U", ylabel="count")
    axes[0].legend()
    imagined, real = np.asarray(data["imagined_value"], float), np.asarray(data["real_value"], float)
    reasons = np.asarray(data["reason"])
    for reason, color in (("", "tab:green"), ("not_better", "tab:gray"), ("termination", "tab:orange"),
                          ("uncertainty", "tab:red")):
        mask = (reasons == reason) & np.isfinite(imagined)
        axes[1].scatter(real[mask], imagined[mask], s=6, color=color, label=reason or "accepted")
    if np.isfinite(imagined).any():
        low, high = np.nanmin([real.min(), np.nanmin(imagined)]), np.nanmax([real.max(), np.nanmax(imagined)])
        axes[1].plot([low, high], [low, high], "k--", lw=1)
    axes[1].set(title="segment value (V's units)", xlabel="real continuation", ylabel="imagined")
    axes[1].legend(fontsize=8)
    counts = {"accepted": report["accepted_in_tried"], **report["rejected"]}
    axes[2].bar(list(counts), list(counts.values()), color=["tab:green", "tab:red", "tab:orange", "tab:gray"])
    axes[2].set(title=f"{report['rollouts']} rollouts; imagined:real {report['ratio_achieved']:.3f}")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".tmp.png"), dpi=90)
    plt.close(fig)
    path.with_suffix(".tmp.png").replace(path)
    return path


# ---- command line ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class AugmentArgs:
    """ipdrl augment: MPC imaginary augmentation of a dataset (IPD stages 1-3)."""

    dataset: str = "embedded"
    """Dataset to augment: a .hdf5 path, a name in $IPDRL_DATASETS, 'embedded', 'minari:<id>' or a D4RL name."""
    out: str | None = None
    """Output .hdf5 (D4RL format); the report (<stem>_report.json/.png) is written next to it.
    Default: augmented/<dataset>-<mode>.hdf5."""
    iql_run: str | None = None
    """Finished `ipdrl train --algo iql` run directory on this dataset. Default: train IQL here (--iql-dir)."""
    iql_dir: str | None = None
    """Run directory for the in-process IQL (reused, and resumed, when it exists). Default: <out stem>_iql."""
    iql_budget: str | None = None
    """Budget of the in-process IQL; default --budget."""
    world_model: str | None = None
    """Saved ensemble (PATH.msgpack + PATH.json): loaded if present, otherwise trained and saved there.
    Default: <out stem>_world_model."""
    seed: int = 0
    progress: bool = True
    augment: AugmentConfig = AugmentConfig()
    model: EnsembleConfig = EnsembleConfig()


def load_values(args: AugmentArgs, dataset: Dataset, budget: str, out: Path) -> tuple[ValueFunctions, dict]:
    """Stage 1: the IQL of ``--iql-run``, or one trained (or resumed) in ``--iql-dir``."""
    from ipdrl import presets
    from ipdrl.algos import iql
    from ipdrl.pipelines import config_dict, train_learner
    from ipdrl.runs import Run

    if args.iql_run:
        run = Run.open(args.iql_run)
        saved = run.config
        if saved.get("algo") != "iql":
            raise ValueError(f"--iql-run {args.iql_run} is a {saved.get('algo')!r} run; pass an `ipdrl train --algo iql` run.")
        config = config_from_json(saved, iql.Config)
        if presets.dataset_key(config.dataset) != presets.dataset_key(args.dataset):
            log.warning("--iql-run was trained on %s, augmenting %s", config.dataset, args.dataset)
        learner = iql.make_learner(config, dataset)
        if not run.has_checkpoint():
            raise FileNotFoundError(f"{run.path} has no checkpoint yet: finish `ipdrl train --algo iql` first.")
        state, step = run.load_checkpoint(learner.init(jax.random.PRNGKey(config.seed)))
        info = {"iql_run": str(run.path), "steps": step}
    else:
        config = presets.make_config(iql, args.dataset, args.iql_budget or budget, seed=args.seed,
                                     progress=args.progress)
        run_dir = Path(args.iql_dir) if args.iql_dir else out.with_name(f"{out.stem}_iql")
        run = Run.create(run_dir, config_dict("iql", config), resume=True)
        state = train_learner(iql.make_learner(config, dataset), config, run, None, dataset.name, stage="iql_")
        info = {"iql_run": str(run.path), "steps": config.steps}
    return from_iql(config, state, dataset.act_dim), info


def load_world_model(args: AugmentArgs, dataset: Dataset, out: Path) -> tuple[EnsembleModel, dict]:
    """Stage 2: the saved ensemble at ``--world-model``, or one trained now and saved there."""
    path = Path(args.world_model) if args.world_model else out.with_name(f"{out.stem}_world_model")
    if path.with_suffix(".json").exists():
        log.info("loading world model %s", path)
        return ensemble.load_model(path), json.loads(path.with_suffix(".json").read_text())["info"]
    model, report = ensemble.train_ensemble(dataset, args.model, args.seed, args.progress)
    ensemble.save_model(model, path, report)
    return model, report


def main(argv: list[str]) -> int:
    """``ipdrl augment [--budget tiny|cpu|paper] --dataset D [--iql-run DIR] [--world-model PATH] --out FILE``."""
    import argparse

    import tyro

    from ipdrl.data.d4rl import write_d4rl
    from ipdrl.data.loading import load_dataset
    from ipdrl.presets import BUDGET_NAMES, dataset_key
    from ipdrl.runs import atomic_write_json

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--budget", default="cpu", choices=BUDGET_NAMES)
    known, rest = pre.parse_known_args(argv)
    default = AugmentArgs(augment=AugmentConfig(**BUDGETS[known.budget]),
                          model=EnsembleConfig(**ensemble.BUDGETS[known.budget]))
    args = tyro.cli(AugmentArgs, default=default, args=rest, prog=f"ipdrl augment --budget {known.budget}",
                    description=(__doc__ or "").strip().splitlines()[0])
    out = Path(args.out or f"augmented/{dataset_key(args.dataset)}-{args.augment.mode}.hdf5")
    dataset = load_dataset(args.dataset)
    values, iql_info = load_values(args, dataset, known.budget, out)
    model, model_report = load_world_model(args, dataset, out)
    progress_file = out.with_name(f"{out.stem}_progress.pkl")  # an interrupted augmentation resumes from here
    augmented, report = augment(dataset, values, model, args.augment, args.seed, args.progress, progress_file)
    write_d4rl(augmented, out)
    progress_file.unlink(missing_ok=True)
    report = {"dataset": dataset.name, "out": str(out), "budget": known.budget, "seed": args.seed, "iql": iql_info,
              "world_model": model_report, "config": dataclasses.asdict(args.augment), **report}
    atomic_write_json(out.with_name(f"{out.stem}_report.json"), report)
    plot_report(report, out.with_name(f"{out.stem}_report.png"))
    print(json.dumps({k: v for k, v in report.items() if k not in ("plot_data", "world_model", "config")}, indent=2))
    return 0
