"""The IPD pipeline end to end at the tiny budget: results, stage caching, resume, re-evaluation, ablations."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipdrl import augmentation, pipelines, presets
from ipdrl.algos import dt, iql, ipd, ipd_stages
from ipdrl.config import config_from_json
from ipdrl.data.d4rl import read_d4rl, write_d4rl
from ipdrl.data.dataset import to_device
from ipdrl.runs import Run
from ipdrl.training import fit


def tiny_config(folder: Path, **changes) -> ipd.Config:
    """The tiny budget on ``folder``'s copy of the fixture, with its own stage cache."""
    return presets.make_config(ipd, str(folder / "hopper-medium-replay.hdf5"), "tiny", cache_dir=str(folder / "cache"),
                               progress=False, **changes)


@pytest.fixture(scope="module")
def first_run(tiny_hopper, tmp_path_factory):
    """One full tiny pipeline from a D4RL file (IQL, world model, MPC augmentation, value-guided DT, evaluation),
    as `ipdrl train --algo ipd --budget tiny --dataset FILE` runs it."""
    folder = tmp_path_factory.mktemp("ipd")
    data_file = write_d4rl(tiny_hopper, folder / "hopper-medium-replay.hdf5")
    config = tiny_config(folder, run_dir=str(folder / "run1"))
    assert config.dataset == str(data_file)
    return folder, config, pipelines.train("ipd", config)


def read_state(path: Path) -> dict:
    return flax.serialization.msgpack_restore(path.read_bytes())["state"]


def policy_steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in Run.open(run_dir).metrics() if "policy_train/loss" in row]


def test_pipeline_writes_results_and_reports(first_run):
    folder, config, results = first_run
    run_dir = folder / "run1"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["checkpoint"] == "final" and saved["episodes"] == 2 and np.isfinite(saved["normalized_mean"])
    assert saved["reference_table"].startswith("D4RL") and saved["algo"] == "ipd"
    stages = saved["stages"]
    assert [stages[name]["cached"] for name in ("iql", "world_model", "augment")] == [False, False, False]
    report = stages["augment"]["report"]
    assert report["mode"] == "mpc" and report["rollouts"] > 0 and "plot_data" not in report
    assert (run_dir / "augmentation_report.json").exists() and (run_dir / "augmentation_report.png").exists()
    assert any("augment/rollouts" in row for row in Run.open(run_dir).metrics())
    assert policy_steps(run_dir) == [50, 100, 150, 200]
    log_text = (run_dir / "log.txt").read_text()
    assert all(f"stage {k}/4" in log_text for k in (1, 2, 3, 4))
    # The critic stays frozen by default: the policy checkpoint holds stage 1's target critic unchanged.
    iql_state = read_state(folder / "cache" / f"iql-{stages['iql']['key']}" / "iql.msgpack")
    policy_state = read_state(run_dir / "policy_checkpoint.msgpack")
    for frozen, trained in zip(jax.tree_util.tree_leaves(policy_state["critic"]["critic_target"]),
                               jax.tree_util.tree_leaves(iql_state["critic_target"])):
        np.testing.assert_array_equal(frozen, trained)


def test_second_run_reuses_stages_and_resumes_after_interruption(first_run, monkeypatch):
    folder, _, first = first_run
    config = tiny_config(folder, run_dir=str(folder / "run2"), alpha=0.0, rtg_mode="classic")
    save = Run.save_checkpoint

    def save_then_crash(self, state, step, name="checkpoint"):
        save(self, state, step, name)
        if name == "policy_checkpoint" and step == 100:
            raise KeyboardInterrupt  # killed right after the step-100 checkpoint

    monkeypatch.setattr(Run, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        pipelines.train("ipd", config)
    monkeypatch.setattr(Run, "save_checkpoint", save)
    results = pipelines.train("ipd", dataclasses.replace(config, resume=True))

    stages = results["stages"]
    assert [stages[name]["cached"] for name in ("iql", "world_model", "augment")] == [True, True, True]
    assert [stages[name]["key"] for name in ("iql", "world_model", "augment")] == [
        first["stages"][name]["key"] for name in ("iql", "world_model", "augment")]
    metrics = Run.open(folder / "run2").metrics()
    assert not any(key.startswith("iql_") for row in metrics for key in row)  # stage 1 never trained here
    assert policy_steps(folder / "run2") == [50, 100, 150, 200]  # resumed at 100, not restarted
    # Classic return tokens start from the best discounted return-to-go label at an episode start of D_aug.
    augmented = read_d4rl(stages["augment"]["cache"])
    best_start = augmented.infos["return_to_go"][augmented.episode_starts].max()
    assert results["return_target"] == pytest.approx(float(best_start), rel=1e-6)


def test_reevaluation_reproduces_results(first_run):
    folder, _, first = first_run
    again = pipelines.evaluate_run("ipd", folder / "run1")
    assert again["returns"] == first["returns"] and again["step"] == 200


def test_no_augmentation_ablation_uses_value_labels_of_the_real_data(first_run):
    folder, _, first = first_run
    config = tiny_config(folder, run_dir=str(folder / "run3"), augment={"ratio": 0.0})
    dataset = read_d4rl(config.dataset)
    run = Run.create(folder / "run3", pipelines.config_dict("ipd", config))
    iql_state, data, labels, timesteps, stages = ipd.training_data(config, dataset, run, None)
    assert data is dataset and set(stages) == {"iql"} and stages["iql"]["cached"]
    values = ipd_stages.value_functions(config.iql, iql_state, dataset.act_dim)
    np.testing.assert_allclose(labels, augmentation.return_labels(dataset, values), rtol=1e-6)
    np.testing.assert_array_equal(timesteps, dataset.timesteps())


def test_another_ratio_continues_from_the_cached_augmentations_batches(first_run, caplog):
    folder, config, _ = first_run
    dataset = read_d4rl(config.dataset)
    first = json.loads(next((folder / "cache").glob("augment-*/report.json")).read_text())
    more = dataclasses.replace(config, augment=dataclasses.replace(config.augment, ratio=1.0, max_passes=2))
    with caplog.at_level("INFO", logger="ipdrl"):
        _, _, _, _, stages = ipd.training_data(more, dataset, Run.create(folder / "run-more", {}), None)
    assert not stages["augment"]["cached"] and "continuing from" in caplog.text
    report = stages["augment"]["report"]  # the tiny set's branch points run out: two whole passes
    assert report["rollouts"] == 2 * first["rollouts"] and report["accepted"] >= first["accepted"]
    assert len(list((folder / "cache").glob("augment-*/progress.pkl"))) == 2  # kept for the next sweep


def test_undiscounted_return_tokens_relabel_the_cached_augmented_data(first_run):
    folder, config, _ = first_run
    dataset = read_d4rl(config.dataset)
    run = Run.create(folder / "run5", {})
    _, _, discounted, _, _ = ipd.training_data(config, dataset, run, None)
    undiscounted = dataclasses.replace(config, return_discount=1.0)
    iql_state, data, labels, _, stages = ipd.training_data(undiscounted, dataset, run, None)
    assert stages["augment"]["cached"] and data.size > dataset.size
    values = ipd_stages.value_functions(config.iql, iql_state, dataset.act_dim)._replace(gamma=1.0)
    np.testing.assert_allclose(labels, augmentation.return_labels(data, values), rtol=1e-6)
    assert labels.max() > discounted.max()  # undiscounted: nothing shrinks what lies ahead


def test_added_steps_can_be_context_only(first_run):
    folder, config, _ = first_run
    dataset = read_d4rl(config.dataset)
    run = Run.create(folder / "run6", {})
    iql_state, data, labels, timesteps, _ = ipd.training_data(config, dataset, run, None)
    copied, imagined = augmentation.copied_prefixes(data), data.infos["imagined"].astype(bool)
    assert not copied[:dataset.size].any() and copied.any()
    assert (copied | imagined)[dataset.size:].all()  # every added step is a copied real step or an imagined one
    learner = ipd.policy_learner(dataclasses.replace(config, loss_on="no-prefixes"), data, iql_state, labels,
                                 timesteps)
    np.testing.assert_array_equal(learner.fields["learn"], ~copied)
    np.testing.assert_array_equal(ipd.loss_mask(data, "data"), np.arange(data.size) < dataset.size)
    assert "learn" not in ipd.policy_learner(config, data, iql_state, labels, timesteps).fields
    with pytest.raises(ValueError, match="--loss-on"):
        dataclasses.replace(config, loss_on="prefixes")


def test_config_round_trips_through_config_json_and_rejects_bad_settings(tmp_path):
    config = tiny_config(tmp_path, alpha=0.3)
    saved = json.loads(json.dumps(pipelines.config_dict("ipd", config)))
    assert saved.pop("algo") == "ipd"
    assert set(saved) <= {f.name for f in dataclasses.fields(ipd.Config)}  # nothing saved that a restore would drop
    restored = config_from_json(saved, ipd.Config)
    assert restored == config and restored.iql.steps == 200 and restored.ensemble.members == 3
    assert not hasattr(config.iql, "seed")  # the run's settings exist once, at the top
    with pytest.raises(ValueError, match="rtg-mode"):
        tiny_config(tmp_path, rtg_mode="fixed")
    with pytest.raises(ValueError, match="return-discount"):
        tiny_config(tmp_path, return_discount=0.0)
    with pytest.raises(ValueError, match="unknown AugmentConfig settings"):
        tiny_config(tmp_path, augment={"horizn": 3})
    assert presets.make_config(ipd, "halfcheetah-medium", "tiny").alpha == 0.4
    assert presets.make_config(ipd, "antmaze-umaze-v2", "tiny").iql.expectile == 0.9


def test_runs_sharing_a_cache_build_each_stage_once(first_run, tmp_path, caplog):
    """Two runs of one seed started at once on an empty cache (a sweep's IPD rows): one trains IQL and the world
    model under their entries' lock files while the other waits and loads them; their augmentations differ only in
    the ratio, so they take turns and the second continues from the batches the first rolled out."""
    folder, config, _ = first_run
    dataset = read_d4rl(config.dataset)

    def stages(ratio: float) -> dict:
        run_config = dataclasses.replace(config, cache_dir=str(tmp_path / "cache"),
                                         augment=dataclasses.replace(config.augment, ratio=ratio))
        return ipd.training_data(run_config, dataset, Run.create(tmp_path / f"run-{ratio}", {}), None)[4]

    with caplog.at_level("INFO", logger="ipdrl"), ThreadPoolExecutor(2) as pool:
        first, second = pool.map(stages, (0.11, 0.12))
    for stage in ("iql", "world_model"):
        assert sorted([first[stage]["cached"], second[stage]["cached"]]) == [False, True], stage
        assert first[stage]["key"] == second[stage]["key"]
    assert not first["augment"]["cached"] and not second["augment"]["cached"]
    assert caplog.text.count("the same batches for another ratio") == 1


def test_critic_finetuning_trains_the_critic_alongside_the_policy(first_run):
    folder, _, first = first_run
    config = tiny_config(folder, finetune_critic=True)
    dataset = read_d4rl(config.dataset)
    iql_state, data, labels, timesteps, _ = ipd.training_data(config, dataset, Run.create(folder / "run4", {}), None)
    learner = ipd.policy_learner(config, data, iql_state, labels, timesteps)
    metrics = []
    state = fit(learner, 4, seed=0, log_every=2, on_chunk=lambda step, state, m: metrics.append(m))
    assert "train/finetune_critic_loss" in metrics[-1] and "train/q_normalized" in metrics[-1]
    for key in ("critic", "critic_target", "value"):
        before, after = jax.tree_util.tree_leaves(iql_state[key])[0], jax.tree_util.tree_leaves(state["critic"][key])[0]
        assert not np.allclose(before, after), key


def test_advantage_weighting_weights_imitation_by_the_critics_awr_weights(first_run):
    folder, _, _ = first_run
    config = tiny_config(folder)
    iql_state, data, labels, timesteps, _ = ipd.training_data(config, read_d4rl(config.dataset),
                                                              Run.create(folder / "weighted", {}), None)

    def first_loss(config: ipd.Config) -> float:
        learner = ipd.policy_learner(config, data, iql_state, labels, timesteps)
        batch = learner.sample(to_device(learner.fields), jax.random.PRNGKey(1))
        return float(jax.jit(learner.update)(learner.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(2))[1]
                     ["train/action_mse"])

    weighted = dataclasses.replace(config, action_weighting="advantage")
    # IQL's temperature 0 weighs every action alike: the plain loss; its own temperature does not.
    flat = dataclasses.replace(weighted, iql=dataclasses.replace(config.iql, temperature=0.0))
    assert first_loss(flat) == pytest.approx(first_loss(config), rel=1e-6)
    assert first_loss(weighted) != pytest.approx(first_loss(config), rel=1e-3)
    # --weight-temperature overrides stage 1's temperature for this weight only.
    assert first_loss(dataclasses.replace(weighted, weight_temperature=0.0)) == pytest.approx(first_loss(config), rel=1e-6)
    assert first_loss(dataclasses.replace(weighted, weight_temperature=config.iql.temperature)) == pytest.approx(
        first_loss(weighted), rel=1e-6)
    with pytest.raises(ValueError, match="action-weighting"):
        tiny_config(folder, action_weighting="awr")
    with pytest.raises(ValueError, match="weight-temperature"):
        tiny_config(folder, weight_temperature=-1.0)
    with pytest.raises(ValueError, match="--transformers > 1 is not supported with --guidance-critic own"):
        tiny_config(folder, transformers=2, guidance_critic="own")
    # --policy-samples: IQL's policy proposes actions beside the transformers', and the critic picks.
    sampling = tiny_config(folder, transformers=2, ensemble_action="critic", policy_samples=3)
    learner = ipd.policy_learner(sampling, data, iql_state, labels, timesteps)
    params = learner.policy_params(learner.init(jax.random.PRNGKey(0)))
    assert "actor" in params["critic"]
    obs = jnp.asarray(data.observations[:2])
    _, action = jax.jit(learner.policy.act)(params, learner.policy.init_carry(params, 2), obs, jnp.zeros(2),
                                            jax.random.PRNGKey(0))
    members_only = ipd.policy_learner(dataclasses.replace(sampling, policy_samples=0), data, iql_state, labels,
                                      timesteps)
    _, members_action = jax.jit(members_only.policy.act)(params, members_only.policy.init_carry(params, 2), obs,
                                                         jnp.zeros(2), jax.random.PRNGKey(0))
    # The pick is the best-rated of the members' pick and the step key's draws of IQL's policy.
    draws = iql.policy_samples(sampling.iql, data.act_dim, 3, params["critic"], obs, jax.random.PRNGKey(0))
    candidates = np.concatenate([np.asarray(members_action)[None], np.asarray(draws)])
    q = np.stack([iql.q_value(sampling.iql, iql_state, obs, a) for a in candidates])
    np.testing.assert_allclose(action, candidates[q.argmax(0), np.arange(2)], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="--policy-samples adds candidates"):
        tiny_config(folder, policy_samples=3)


def test_imagined_max_weight_caps_only_the_planners_actions(first_run, monkeypatch):
    folder, _, _ = first_run
    config = tiny_config(folder, action_weighting="advantage", batch_size=1024)
    iql_state, data, labels, timesteps, _ = ipd.training_data(config, read_d4rl(config.dataset),
                                                              Run.create(folder / "capped", {}), None)
    imagined = augmentation.imagined_steps(data)

    def first_step(config: ipd.Config) -> tuple[float, int]:
        """The first update's weighted action MSE, and how many imagined steps its batch holds."""
        learner = ipd.policy_learner(config, data, iql_state, labels, timesteps)
        batch = learner.sample(to_device(learner.fields), jax.random.PRNGKey(1))
        mse = jax.jit(learner.update)(learner.init(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(2))[1]
        capped = (np.isfinite(np.asarray(batch["weight_cap"])) & (np.asarray(batch["mask"]) > 0)).sum() \
            if "weight_cap" in batch else 0
        return float(mse["train/action_mse"]), int(capped)

    uncapped, _ = first_step(config)
    near_zero, imagined_in_batch = first_step(dataclasses.replace(config, imagined_max_weight=1e-9))
    assert imagined.any() and imagined_in_batch > 0
    # A cap above every weight changes nothing; a cap near zero takes the imagined actions out of the loss, as if
    # only the real steps (copied prefixes included) were learned from.
    assert first_step(dataclasses.replace(config, imagined_max_weight=1e9))[0] == pytest.approx(uncapped, rel=1e-6)
    monkeypatch.setattr(ipd, "loss_mask", lambda data, loss_on: ~imagined)
    assert near_zero == pytest.approx(first_step(config)[0], rel=1e-4)
    assert near_zero != pytest.approx(uncapped, rel=1e-3)
    for wrong in ({"imagined_max_weight": 0.0}, {"imagined_max_weight": 1.0, "action_weighting": "none"},
                  {"imagined_max_weight": 1.0, "augment": {"ratio": 0.0}}):
        with pytest.raises(ValueError, match="--imagined-max-weight"):
            tiny_config(folder, **wrong)


def test_conditioning_like_dt_asks_for_dts_target_in_v_units():
    config = presets.make_config(ipd, "hopper-medium-replay", "cpu", rtg_mode="classic", return_discount=1.0)
    assert config.raw_target_return == dt.PRESETS["hopper"]["target_return"]
    first_labels = np.array([10.0, 50.0])
    assert ipd.classic_target(config, first_labels, 0.5, 0.0) == 0.5 * config.raw_target_return
    assert ipd.classic_target(dataclasses.replace(config, target_return=7.0), first_labels, 0.5, 0.0) == 7.0
    # a raw return is no discounted label, and shifted rewards add a per-step term: the largest label instead
    assert ipd.classic_target(dataclasses.replace(config, return_discount=None), first_labels, 0.5, 0.0) == 50.0
    assert ipd.classic_target(config, first_labels, 0.5, -1.0) == 50.0


def test_stage_one_can_be_a_finished_iql_run(first_run):
    """`--iql-run DIR`: a separately trained IQL (say, to its curve's plateau) is stage 1, with its own settings."""
    folder, _, _ = first_run
    data_file = str(folder / "hopper-medium-replay.hdf5")
    iql_config = presets.make_config(iql, data_file, "tiny", run_dir=str(folder / "iql-run"), progress=False,
                                     hidden_dims=(32, 32), eval_episodes=1)
    pipelines.train("iql", iql_config)
    config = tiny_config(folder, run_dir=str(folder / "run-iql-run"), iql_run=str(folder / "iql-run"),
                         augment={"ratio": 0.0})
    results = pipelines.train("ipd", config)
    assert results["stages"]["iql"]["iql_run"] == str(folder / "iql-run")
    assert not any(key.startswith("iql_") for row in Run.open(folder / "run-iql-run").metrics() for key in row)
    policy_state = read_state(folder / "run-iql-run" / "policy_checkpoint.msgpack")
    for used, trained in zip(jax.tree_util.tree_leaves(policy_state["critic"]["critic_target"]),
                             jax.tree_util.tree_leaves(read_state(folder / "iql-run" / "checkpoint.msgpack")
                                                       ["critic_target"])):
        np.testing.assert_array_equal(used, trained)  # the run's 32-wide critic, not --iql.*'s
    assert pipelines.evaluate_run("ipd", folder / "run-iql-run")["returns"] == results["returns"]

    with pytest.raises(ValueError, match="pass an `ipdrl train --algo iql` run"):
        pipelines.train("ipd", dataclasses.replace(config, iql_run=str(folder / "run1"),
                                                   run_dir=str(folder / "run-ipd")))
    other = write_d4rl(read_d4rl(data_file), folder / "other.hdf5")
    with pytest.raises(ValueError, match="not on .*other.hdf5: pass an IQL run of this dataset"):
        pipelines.train("ipd", dataclasses.replace(config, dataset=str(other), run_dir=str(folder / "run-other")))
