"""IPD stage 3 on tiny_hopper: branch points, the acceptance rule, the uncertainty stop, labels, the ratio knob."""

from __future__ import annotations

import dataclasses
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipdrl import augmentation
from ipdrl.algos import ipd_stages, iql
from ipdrl.augmentation import AugmentConfig, ValueFunctions, augment
from ipdrl.augmentation import orchestration
from ipdrl.augmentation.rollouts import judge as judge_fn
from ipdrl.augmentation.values import RealData, branch_candidates
from ipdrl.commands import augment as augment_command
from ipdrl.world_models import ensemble, train_ensemble
from ipdrl.world_models.ensemble import EnsembleConfig

# Tiny and fast; branch_threshold=-inf makes every state a candidate, since an untrained V ranks them arbitrarily.
CONFIG = AugmentConfig(num_samples=16, horizon=3, iterations=2, num_elites=4, rollout_length=6, min_rollout_length=2,
                       prefix_length=4, branch_batch=32, ratio=0.03, max_passes=1, branch_threshold=-np.inf)


@pytest.fixture(scope="module")
def setup(tiny_hopper):
    dataset = tiny_hopper.first_episodes(30)
    iql_config = iql.Config(hidden_dims=(32, 32))
    iql_state = iql.make_learner(iql_config, dataset).init(jax.random.PRNGKey(0))
    values = ipd_stages.value_functions(iql_config, iql_state, dataset.act_dim)
    model, _ = train_ensemble(dataset, EnsembleConfig(members=3, elites=2, hidden_dims=(32, 32),
                                                               max_steps=100, eval_every=50), 0, progress=False)
    augmented, report = augment(dataset, values, model, CONFIG, seed=0, progress=False)
    return dataset, values, model, augmented, report


def new_episodes(augmented, original_size: int) -> list[np.ndarray]:
    ends = augmented.episode_ends
    starts = augmented.episode_starts
    return [np.arange(s, e) for s, e in zip(starts, ends) if s >= original_size]


def by_hand_return_to_go(rewards, next_value_at_end, terminal_at_end, values: ValueFunctions) -> np.ndarray:
    out, acc = np.zeros(len(rewards)), 0.0 if terminal_at_end else next_value_at_end
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] * values.reward_scale + values.reward_shift + values.gamma * acc
        out[t] = acc
    return out


def test_augmented_episodes_are_well_formed(setup):
    dataset, values, model, augmented, report = setup
    n = dataset.size
    assert report["accepted"] > 0 and augmented.size == n + report["new_transitions"]
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        np.testing.assert_array_equal(getattr(augmented, key)[:n], getattr(dataset, key))
    imagined, timesteps = augmented.infos["imagined"], augmented.infos["timesteps"]
    assert not imagined[:n].any() and int(imagined.sum()) == report["imagined_transitions"]
    np.testing.assert_array_equal(timesteps[:n], dataset.timesteps())
    episodes = new_episodes(augmented, n)
    assert len(episodes) == report["accepted"]
    for index in episodes:
        flags = imagined[index]
        prefix = int((~flags).sum())
        assert prefix <= CONFIG.prefix_length and flags[prefix:].all() and not flags[:prefix].any()
        assert CONFIG.min_rollout_length <= flags.sum() <= CONFIG.rollout_length
        assert augmented.terminals[index[-1]] or augmented.timeouts[index[-1]]
        assert not (augmented.terminals[index[:-1]] | augmented.timeouts[index[:-1]]).any()
        # The imagined part starts at a real state of the data and continues its timestep.
        branch_state = augmented.observations[index[prefix]]
        branch = np.flatnonzero((dataset.observations == branch_state).all(1))
        assert len(branch) >= 1
        t = branch[0]
        np.testing.assert_array_equal(timesteps[index], dataset.timesteps()[t] - prefix + np.arange(len(index)))
        np.testing.assert_array_equal(augmented.observations[index[:prefix]], dataset.observations[t - prefix:t])
        np.testing.assert_array_equal(augmented.observations[index[1:]], augmented.next_observations[index[:-1]])
        if "qpos" in dataset.infos:  # simulator states: real ones copied for the prefix, NaN where imagined
            assert np.isnan(augmented.infos["qpos"][index[prefix:]]).all()
            np.testing.assert_array_equal(augmented.infos["qpos"][index[:prefix]], dataset.infos["qpos"][t - prefix:t])


def test_return_to_go_labels_match_a_hand_computation(setup):
    dataset, values, _, augmented, _ = setup
    labels = augmented.infos["return_to_go"]
    np.testing.assert_allclose(labels[:dataset.size], augmentation.return_labels(dataset, values), rtol=1e-5)
    v = lambda obs: float(values.v(jnp.asarray(obs[None]))[0])
    for index in (np.arange(dataset.episode_starts[1], dataset.episode_ends[1]), new_episodes(augmented, dataset.size)[0]):
        last = index[-1]
        expected = by_hand_return_to_go(augmented.rewards[index], v(augmented.next_observations[last]),
                                        augmented.terminals[last], values)
        np.testing.assert_allclose(labels[index], expected, rtol=1e-4, atol=1e-4)


def test_imagined_steps_stay_below_kappa(setup):
    _, _, model, augmented, report = setup
    imagined = augmented.infos["imagined"]
    u = ensemble.uncertainty(model, augmented.observations[imagined], augmented.actions[imagined], CONFIG.uncertainty)
    assert float(jnp.max(u)) <= report["kappa"] + 1e-6


def test_uncertainty_stop_rejects_everything_at_kappa_zero(setup):
    dataset, values, model, _, _ = setup
    augmented, report = augment(dataset, values, model, dataclasses.replace(CONFIG, kappa=0.0), seed=0,
                                progress=False)
    assert report["accepted"] == 0 and augmented.size == dataset.size
    assert report["rejected"]["uncertainty"] == report["rollouts"] > 0


def test_acceptance_requires_beating_the_real_continuation(setup):
    dataset, values, model, _, _ = setup
    # Real rewards far above anything the model imagines: no imagined segment can be better.
    lucky = dataset.replace(rewards=np.full(dataset.size, 1000.0, np.float32))
    _, report = augment(lucky, values, model, CONFIG, seed=0, progress=False)
    assert report["accepted"] == 0 and report["rejected"]["not_better"] > 0
    # Real rewards far below: every long-enough, non-terminating segment is accepted.
    unlucky = dataset.replace(rewards=np.full(dataset.size, -1000.0, np.float32))
    _, report = augment(unlucky, values, model, CONFIG, seed=0, progress=False)
    assert report["accepted"] > 0 and report["rejected"]["not_better"] == 0


def test_judge_rules_on_constructed_rollouts():
    values = ValueFunctions(q=None, v=lambda obs: jnp.zeros(obs.shape[0]), policy=None, gamma=0.5,
                            reward_scale=1.0, reward_shift=0.0)
    data = RealData(rewards=np.ones(10), next_values=np.zeros(10), terminals=np.zeros(10, bool),
                                 episode_end=np.full(10, 10))
    config = dataclasses.replace(CONFIG, rollout_length=4, min_rollout_length=2)
    rollouts = {  # four rollouts of four steps
        "uncertainty": np.array([[0, 0, 0, 0], [0, 5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 5]], float),
        "terminals": np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool),
        "rewards": np.array([[2, 2, 2, 2], [9, 9, 9, 9], [9, 9, 9, 9], [0.5, 0.5, 0.5, 0.5]], float),
        "next_observations": np.zeros((4, 4, 3)),
        "next_values": np.zeros((4, 4)),
    }
    verdict = judge_fn(rollouts, np.zeros(4, int), data, values, kappa=1.0, config=config)
    np.testing.assert_array_equal(verdict.lengths, [4, 1, 3, 3])
    np.testing.assert_array_equal(verdict.terminated, [False, False, True, False])
    # 2 + 1 + 0.5 + 0.25 vs the data's 1 + 0.5 + 0.25 + 0.125; 0.5 * (1 + .5 + .25) < 1 + .5 + .25 over 3 steps.
    np.testing.assert_allclose(verdict.imagined_value[[0, 3]], [3.75, 0.875])
    np.testing.assert_allclose(verdict.real_value[[0, 3]], [1.875, 1.75])
    assert list(verdict.reason) == ["", "uncertainty", "termination", "not_better"]


def test_ratio_knob_is_honoured(setup):
    dataset, values, model, _, _ = setup
    unlucky = dataset.replace(rewards=np.full(dataset.size, -1000.0, np.float32))  # plenty of acceptable segments
    for ratio in (0.02, 0.05):
        _, report = augment(unlucky, values, model, dataclasses.replace(CONFIG, ratio=ratio, max_passes=3), seed=0,
                            progress=False)
        target = round(ratio * dataset.size)
        assert report["target_imagined_transitions"] == target
        assert target <= report["imagined_transitions"] < target + CONFIG.rollout_length
        assert report["ratio_achieved"] == pytest.approx(report["imagined_transitions"] / dataset.size)


def test_an_unreachable_ratio_is_reported_and_warned_about(setup, caplog):
    dataset, values, model, _, _ = setup
    few = dataset.first_episodes(2)
    with caplog.at_level("WARNING", logger="ipdrl"):
        _, report = augment(few, values, model, dataclasses.replace(CONFIG, ratio=10.0), seed=0, progress=False)
    assert report["candidates_exhausted"] and report["ratio_achieved"] < 10.0
    assert "--augment.max-passes" in caplog.text


def test_an_interrupted_augmentation_resumes_to_the_same_result(setup, tmp_path, monkeypatch, caplog):
    dataset, values, model, _, _ = setup
    plenty = dataset.replace(rewards=np.full(dataset.size, -1000.0, np.float32))  # every segment is accepted
    config = dataclasses.replace(CONFIG, ratio=1.0, max_passes=3)
    whole, whole_report = augment(plenty, values, model, config, seed=0, progress=False)
    assert whole_report["rollouts"] > 2 * config.branch_batch  # several batches, so the interruption is mid-way

    progress_file, judge, calls = tmp_path / "progress.pkl", judge_fn, []

    def judge_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return judge(*args, **kwargs)

    monkeypatch.setattr(orchestration, "judge", judge_then_stop)
    with pytest.raises(KeyboardInterrupt):
        augment(plenty, values, model, config, seed=0, progress=False, progress_file=progress_file,
                save_every_seconds=0)
    monkeypatch.setattr(orchestration, "judge", judge)
    assert pickle.loads(progress_file.read_bytes()).batches_done == 2

    with caplog.at_level("INFO", logger="ipdrl"):
        resumed, report = augment(plenty, values, model, config, seed=0, progress=False, progress_file=progress_file)
    assert "resuming" in caplog.text and report["rollouts"] == whole_report["rollouts"]
    for key in ("observations", "actions", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(resumed, key), getattr(whole, key))

    # Progress saved for other inputs (here another seed) is not used.
    with caplog.at_level("WARNING", logger="ipdrl"):
        augment(plenty, values, model, config, seed=1, progress=False, progress_file=progress_file)
    assert "saved for other settings" in caplog.text


def test_a_ratio_sweep_rolls_out_each_batch_once(setup, tmp_path, monkeypatch, caplog):
    dataset, values, model, _, _ = setup
    plenty = dataset.replace(rewards=np.full(dataset.size, -1000.0, np.float32))  # every segment is accepted
    small, large = (dataclasses.replace(CONFIG, ratio=ratio, max_passes=3) for ratio in (0.4, 1.0))
    expected = {config.ratio: augment(plenty, values, model, config, seed=0, progress=False)
                for config in (small, large)}
    small_file, large_file = tmp_path / "small.pkl", tmp_path / "large.pkl"
    augment(plenty, values, model, small, seed=0, progress=False, progress_file=small_file)
    batches_small = pickle.loads(small_file.read_bytes()).batches_done
    assert 0 < batches_small < expected[1.0][1]["rollouts"] / CONFIG.branch_batch

    judge, calls = judge_fn, []
    monkeypatch.setattr(orchestration, "judge", lambda *args, **kwargs: calls.append(1) or judge(*args, **kwargs))
    for config, own, others in ((large, large_file, [small_file]), (small, tmp_path / "again.pkl", [large_file])):
        calls.clear()
        with caplog.at_level("INFO", logger="ipdrl"):
            result, report = augment(plenty, values, model, config, seed=0, progress=False, progress_file=own,
                                     other_progress_files=others)
        assert "continuing from" in caplog.text
        whole, whole_report = expected[config.ratio]
        # The larger ratio rolls out only the batches the smaller one had not; the smaller one none at all, and is
        # cut where a run that stopped at its target stops.
        assert len(calls) == (whole_report["rollouts"] // CONFIG.branch_batch - batches_small if config is large
                              else 0)
        assert report["rollouts"] == whole_report["rollouts"] and report["accepted"] == whole_report["accepted"]
        for key in ("observations", "actions", "rewards", "terminals"):
            np.testing.assert_array_equal(getattr(result, key), getattr(whole, key))
        np.testing.assert_array_equal(result.infos["return_to_go"], whole.infos["return_to_go"])


def test_augmentation_is_deterministic_for_a_seed(setup):
    dataset, values, model, augmented, _ = setup
    again, _ = augment(dataset, values, model, CONFIG, seed=0, progress=False)
    other, _ = augment(dataset, values, model, CONFIG, seed=1, progress=False)
    for key in ("observations", "actions", "rewards"):
        np.testing.assert_array_equal(getattr(again, key), getattr(augmented, key))
    np.testing.assert_array_equal(again.infos["return_to_go"], augmented.infos["return_to_go"])
    assert other.size != augmented.size or not np.array_equal(other.observations, augmented.observations)


def test_greedy_q_mode_and_bad_inputs(setup):
    dataset, values, model, _, _ = setup
    augmented, report = augment(dataset, values, model, dataclasses.replace(CONFIG, mode="greedy-q"), seed=0,
                                progress=False)
    assert report["mode"] == "greedy-q" and report["rollouts"] > 0
    assert int(augmented.infos["imagined"].sum()) == report["imagined_transitions"]
    with pytest.raises(ValueError, match="mode"):
        dataclasses.replace(CONFIG, mode="beam")
    other_dims = dataset.replace(observations=dataset.observations[:, :5], next_observations=dataset.next_observations[:, :5])
    with pytest.raises(ValueError, match="observations of dim 11"):
        augment(other_dims, values, model, CONFIG, seed=0, progress=False)


def test_branch_candidates_take_each_trajectorys_worst_states(tiny_hopper):
    dataset = tiny_hopper.first_episodes(3)
    delta = np.random.default_rng(0).normal(size=dataset.size)
    config = dataclasses.replace(CONFIG, branch_threshold=None, branch_fraction=0.2)
    chosen = branch_candidates(dataset, delta, config)
    assert np.all(np.diff(delta[chosen]) <= 0) and np.all(delta[chosen] > 0)
    episode = dataset.episode_index()
    for e, length in enumerate(dataset.episode_lengths()):
        mine = chosen[episode[chosen] == e]
        positive = np.sort(delta[episode == e])[::-1]
        expected = positive[: int(np.ceil(0.2 * length))]
        np.testing.assert_array_equal(np.sort(delta[mine])[::-1], expected[expected > 0])


def test_cli_writes_the_augmented_dataset_and_report(setup, tmp_path):
    from ipdrl.data.d4rl import read_d4rl, write_d4rl
    from ipdrl.pipelines import config_dict
    from ipdrl.runs import Run

    dataset, _, model, _, _ = setup
    data_path = write_d4rl(dataset, tmp_path / "hopper-tiny.hdf5")
    iql_config = iql.Config(hidden_dims=(32, 32), dataset=str(data_path))
    run = Run.create(tmp_path / "iql", config_dict("iql", iql_config))
    run.save_checkpoint(iql.make_learner(iql_config, dataset).init(jax.random.PRNGKey(0)), 0)
    ensemble.save_model(model, tmp_path / "wm")
    out = tmp_path / "out" / "aug.hdf5"
    assert augment_command.main(["--budget", "tiny", "--dataset", str(data_path), "--iql-run", str(run.path),
                              "--world-model", str(tmp_path / "wm"), "--out", str(out), "--no-progress",
                              "--augment.branch-threshold", "-inf"]) == 0
    written = read_d4rl(out)
    report = json.loads((tmp_path / "out" / "aug_report.json").read_text())
    assert written.size == dataset.size + report["new_transitions"] and report["accepted"] > 0
    assert {"return_to_go", "timesteps", "imagined", *dataset.infos} <= set(written.infos)
    assert int(written.infos["imagined"].sum()) == report["imagined_transitions"]
    assert (tmp_path / "out" / "aug_report.png").exists()
    not_iql = Run.create(tmp_path / "bc", {"algo": "bc"})
    with pytest.raises(ValueError, match="is a 'bc' run"):
        augment_command.main(["--dataset", str(data_path), "--iql-run", str(not_iql.path), "--out", str(out)])


def test_max_value_relabel_raises_labels_to_the_value_backwards(setup):
    dataset, values, _, _, _ = setup
    labels = augmentation.return_labels(dataset, values)
    relabelled = augmentation.max_value_relabel(dataset, labels, values)
    v = np.asarray(jax.jit(values.v)(dataset.observations))
    assert np.all(relabelled >= np.maximum(labels, v) - 1e-4)
    t = int(dataset.episode_starts[1])  # inside an episode: R_t = max(r_t + gamma R_{t+1}, V(s_t))
    expected = max(values.scale(float(dataset.rewards[t])) + values.gamma * relabelled[t + 1], v[t])
    assert relabelled[t] == pytest.approx(expected, rel=1e-4)


def test_splice_attaches_each_segment_to_its_whole_real_prefix(setup):
    dataset, values, model, _, _ = setup
    plenty = dataset.replace(rewards=np.full(dataset.size, -1000.0, np.float32))  # every segment is accepted
    spliced, report = augment(plenty, values, model, dataclasses.replace(CONFIG, attach="splice"), seed=0,
                              progress=False)
    added = spliced.select(np.arange(dataset.size, spliced.size))
    assert report["accepted"] > 0
    assert np.all(added.infos["timesteps"][added.episode_starts] == 0)  # every added episode starts at its start
