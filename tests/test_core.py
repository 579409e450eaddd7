"""The shared training loop, run directories, envs, CLI and the shared networks' initialiser."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_dataset
from ipdrl import envs, networks
from ipdrl.algos import iql
from ipdrl.runs import Run, atomic_write_bytes
from ipdrl.training import fit


def tiny_iql(dataset, **changes):
    config = iql.Config(hidden_dims=(16, 16), batch_size=32, steps=40, log_every=10, **changes)
    return config, iql.make_learner(config, dataset)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_fit_is_deterministic_and_resume_is_exact(tmp_path):
    dataset = synthetic_dataset()
    config, learner = tiny_iql(dataset)
    full = fit(learner, 40, seed=3, log_every=10)
    again = fit(learner, 40, seed=3, log_every=10)
    assert leaves_equal(full, again)

    run = Run.create(tmp_path / "run", {"algo": "iql"})
    half = fit(learner, 20, seed=3, log_every=10)
    run.save_checkpoint(half, 20)
    restored, step = run.load_checkpoint(learner.init(jax.random.PRNGKey(0)))
    resumed = fit(learner, 40, seed=3, log_every=10, state=restored, start_step=step)
    assert step == 20 and leaves_equal(full, resumed)
    other_seed = fit(learner, 40, seed=4, log_every=10)
    assert not leaves_equal(full, other_seed)


def test_fit_reports_divergence():
    dataset = synthetic_dataset()
    dataset = dataset.replace(rewards=np.full_like(dataset.rewards, 1e30))
    config, learner = tiny_iql(dataset, reward_mode="none")
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(learner, 40, seed=0, log_every=10)


def test_run_directory_resume_rules_and_metrics(tmp_path):
    run = Run.create(tmp_path / "r", {"algo": "iql", "seed": 0})
    for step in (10, 20, 30):
        run.log_metrics(step, {"train/loss": step / 10})
    run.truncate_metrics(20)
    assert [r["step"] for r in run.metrics()] == [10, 20]
    assert (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0] == "step,train/loss"
    assert run.plot().exists()
    with pytest.raises(FileExistsError, match="--resume"):
        Run.create(tmp_path / "r", {"algo": "iql", "seed": 0})
    with pytest.raises(ValueError, match="differs"):
        Run.create(tmp_path / "r", {"algo": "iql", "seed": 1}, resume=True)
    Run.create(tmp_path / "r", {"algo": "iql", "seed": 0}, resume=True)
    # A setting added after the run began: resuming with its default is the same run, with another value it is not.
    newer = {"algo": "iql", "seed": 0, "ensemble": 1}
    Run.create(tmp_path / "r2", {"algo": "iql", "seed": 0})
    with pytest.raises(ValueError, match=r"differs in \['ensemble'\]"):
        Run.create(tmp_path / "r2", dict(newer, ensemble=5), resume=True, defaults=newer)
    Run.create(tmp_path / "r2", newer, resume=True, defaults=newer)
    # The same inside a nested stage's settings, named by its path.
    Run.create(tmp_path / "r3", {"algo": "ipd", "iql": {"steps": 5}})
    with pytest.raises(ValueError, match=r"differs in \['iql.expectile'\]"):
        Run.create(tmp_path / "r3", {"algo": "ipd", "iql": {"steps": 5, "expectile": 0.9}}, resume=True,
                   defaults={"iql": {"steps": 1, "expectile": 0.7}})
    Run.create(tmp_path / "r3", {"algo": "ipd", "iql": {"steps": 5, "expectile": 0.7}}, resume=True,
               defaults={"iql": {"steps": 1, "expectile": 0.7}})


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    dataset = synthetic_dataset()
    _, learner = tiny_iql(dataset)
    run = Run.create(tmp_path / "r", {"algo": "iql"})
    state = learner.init(jax.random.PRNGKey(0))
    run.save_checkpoint(state, 5)
    (tmp_path / "r" / "checkpoint.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt"):
        run.load_checkpoint(state)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_envs_names_scores_and_dims():
    assert envs.env_id_for("hopper-medium-replay-v2") == "Hopper-v5"
    assert envs.env_id_for("x", {"env": "HalfCheetah-v5"}) == "HalfCheetah-v5"
    assert envs.reference_for("hopper-medium").normalize(3234.3) == pytest.approx(100.0)
    assert envs.reference_for("kitchen-complete-v0").normalize(2.0) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="--env"):
        envs.env_id_for("mystery-data")
    env = envs.make_env("Hopper-v5")
    with pytest.raises(ValueError, match="observation dim 17"):
        envs.check_dims(env, 17, 6, "dataset 'walker'")
    with pytest.raises(ValueError, match="cannot make"):
        envs.make_env("NoSuchEnv-v9")


def test_known_termination_functions_match_gymnasium():
    env = envs.make_env("Hopper-v5", seed=0)
    done_fn = envs.termination_fn("hopper")
    obs, _ = env.reset(seed=0)
    for _ in range(200):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert bool(done_fn(obs[None])[0]) == terminated
        if terminated or truncated:
            obs, _ = env.reset()


def test_cli_lists_commands_and_rejects_unknown(capsys):
    from ipdrl.commands import main

    assert main(["--help"]) == 0
    assert "ipdrl train" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--algo", "iql", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--expectile" in help_text and "--temperature" in help_text and "--steps" in help_text


def test_orthogonal_init_under_vmap_equals_one_matrix_at_a_time():
    init = networks.default_init()
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    batched = jax.jit(jax.vmap(lambda key: init(key, (40, 24))))(keys)
    assert batched.shape == (3, 40, 24)
    for key, matrix in zip(keys, batched):
        np.testing.assert_array_equal(matrix, init(key, (40, 24)))
    np.testing.assert_allclose(batched[0].T @ batched[0], 2.0 * np.eye(24), atol=1e-5)  # orthogonal, scale sqrt(2)


INIT_DIGEST = """
import hashlib
import ipdrl, jax, numpy as np
from ipdrl import networks
print(hashlib.sha256(np.asarray(networks.default_init()(jax.random.PRNGKey(1), (256, 256))).tobytes()).hexdigest())
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS runs one thread on one core whatever it is told")
def test_a_seed_initialises_the_same_networks_alone_and_in_a_dask_worker():
    # Orthogonal init's QR runs in OpenBLAS, one thread per core by default but one in a Dask worker (which sets
    # OMP_NUM_THREADS=1). Until ipdrl fixed the count, the two drew different 256 x 256 layers from one key, and a
    # sweep's IQL seed 0 trained to another policy than `ipdrl run`'s.
    digests = set()
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    for threads in ({}, {"OMP_NUM_THREADS": "1"}, {"OPENBLAS_NUM_THREADS": "2"}):
        result = subprocess.run([sys.executable, "-c", INIT_DIGEST], capture_output=True, text=True, timeout=180,
                                env={**clean, **threads, "JAX_PLATFORMS": "cpu"})
        assert result.returncode == 0, result.stderr[-2000:]
        digests.add(result.stdout.strip())
    assert len(digests) == 1


REBRAC_INIT = """
import os, sys
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:2]))  # XLA sizes its thread pool from this
sys.path.insert(0, sys.argv[1])
import jax
from conftest import synthetic_dataset
from ipdrl.algos import rebrac
learner = rebrac.make_learner(rebrac.Config(), synthetic_dataset(obs_dim=17, act_dim=6))
jax.block_until_ready(jax.jit(learner.init)(jax.random.PRNGKey(0)))
print("initialised")
"""


@pytest.mark.parametrize("shape", [(6, 3), (3, 6)])
def test_matmul_gives_the_gradients_of_a_plain_product_in_either_orientation(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), (5, shape[0]))
    kernel = jax.random.normal(jax.random.PRNGKey(1), shape)
    loss = lambda product: lambda x, k: jnp.sin(product(x, k)).sum()
    ours = jax.grad(loss(networks.matmul), argnums=(0, 1))(x, kernel)
    plain = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, kernel)
    np.testing.assert_allclose(networks.matmul(x, kernel), x @ kernel, rtol=1e-6)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Under vmap (ensembles) too.
    batched = jax.vmap(jax.grad(loss(networks.matmul), argnums=1))(jnp.stack([x, 2 * x]), jnp.stack([kernel, kernel]))
    np.testing.assert_allclose(batched[1], jax.grad(loss(jnp.matmul), argnums=1)(2 * x, kernel), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the deadlock needs an XLA thread pool of 2 threads")
def test_jitted_rebrac_init_does_not_deadlock_on_two_cores():
    # Halfcheetah-sized ReBRAC (twin 3 x 256 critics): with jaxlib's batched QR its jitted init hung every time on
    # 2 cores (the test then fails by timeout).
    result = subprocess.run([sys.executable, "-c", REBRAC_INIT, os.path.dirname(__file__)], capture_output=True,
                            text=True, timeout=180, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "initialised" in result.stdout


def test_an_algorithm_of_ones_own_registers_and_trains_through_the_pipeline(tmp_path):
    import dataclasses

    import jax.numpy as jnp
    import optax

    from ipdrl import pipelines, presets
    from ipdrl.algos import available, get_algorithm
    from ipdrl.algos.common import learner_algorithm, mlp_policy, transition_learner
    from ipdrl.config import FitConfig, RunConfig
    from ipdrl.data.loading import load_dataset
    from ipdrl.networks import DeterministicActor
    from ipdrl.optim import gradient_step

    @dataclasses.dataclass
    class Config(RunConfig, FitConfig):
        learning_rate: float = 1e-3

    def make_learner(config, dataset):
        actor, optimizer = DeterministicActor(dataset.act_dim, (16,)), optax.adam(config.learning_rate)

        def init(key):
            params = actor.init(key, jnp.zeros((1, dataset.obs_dim)))
            return {"actor": params, "opt": optimizer.init(params),
                    "obs_stats": {"mean": jnp.zeros(dataset.obs_dim), "std": jnp.ones(dataset.obs_dim)}}

        def update(state, batch, key):
            step = gradient_step(lambda p: ((actor.apply(p, batch["observations"]) - batch["actions"]) ** 2).mean(),
                                 optimizer, state["actor"], state["opt"])
            return dict(state, actor=step.params, opt=step.opt_state), {"train/loss": step.loss}

        fields = {"observations": dataset.observations, "actions": dataset.actions}
        return transition_learner(fields, init, update, config.batch_size, mlp_policy(actor.apply))

    learner_algorithm("test-bc", Config, make_learner, "a test algorithm", {"tiny": dict(batch_size=32)})
    assert "test-bc" in available() and get_algorithm("test-bc").summary == "a test algorithm"
    config = presets.make_config(get_algorithm("test-bc"), "embedded", "tiny", steps=20, log_every=10,
                                 eval_episodes=1, run_dir=str(tmp_path / "run"), progress=False)
    assert config.batch_size == 32
    results = pipelines.train("test-bc", config)
    assert results["algo"] == "test-bc" and results["steps"] == 20 and (tmp_path / "run" / "checkpoint.json").exists()
    embedded = load_dataset("embedded")
    assert results["dataset_fingerprint"] == embedded.fingerprint() != embedded.replace(
        rewards=embedded.rewards + 1).fingerprint()  # which data a run trained on travels with its results
    where = results["finished_on"]  # and where it trained: a seed's last bits depend on the CPU and its core count
    assert where["cores"] == len(os.sched_getaffinity(0)) and where["cpu"] and where["backend"] == "cpu"
    with pytest.raises(ValueError, match="unknown algorithm 'nope'"):
        get_algorithm("nope")


def test_flat_flags_of_the_earlier_release_still_set_the_nested_dwm_settings(caplog):
    from ipdrl.algos import get_algorithm
    from ipdrl.pipelines import translate_legacy_flags

    dwm = get_algorithm("dwm-mpc")
    with caplog.at_level("WARNING", logger="ipdrl"):
        argv = translate_legacy_flags(dwm, ["--horizon", "7", "--model", "diffusion", "--model-lr=1e-4",
                                            "--model-batch-size", "128", "--steps", "50", "--adapt-lr", "1e-3"])
    assert argv == ["--planner.horizon", "7", "--model.kind", "diffusion", "--model.learning-rate=1e-4",
                    "--reward.learning-rate=1e-4", "--model.batch-size=128", "--reward.batch-size=128",
                    "--rebrac.steps", "50", "--adapt-lr", "1e-3"]
    assert "--horizon is now --planner.horizon" in caplog.text


def test_evaluations_can_be_recorded_for_plots():
    import jax.numpy as jnp

    from ipdrl.evaluation import evaluate, recording_observations, stateless_policy

    policy = stateless_policy(lambda params, obs, key: jnp.zeros((obs.shape[0], 1)))
    with recording_observations() as recorded:
        result = evaluate(policy, {}, "Pendulum-v1", episodes=2, seed=0, max_steps=7)
    evaluate(policy, {}, "Pendulum-v1", episodes=1, seed=0, max_steps=3)  # outside: not recorded
    assert len(recorded) == 1 and [len(e) for e in recorded[0]] == [n + 1 for n in result["lengths"]] == [8, 8]
    assert recorded[0][0].shape == (8, 3)


def test_a_cached_program_trains_the_same_bits_as_a_fresh_compile(tmp_path):
    # The second run loads every program the first compiled (ipdrl/host.py: use_compilation_cache) and must train to
    # the same checkpoint and scores. JAX would only warn on a cache it cannot read, and compile: here it raises.
    cache = tmp_path / "xla"
    env = dict(os.environ, IPDRL_COMPILATION_CACHE=str(cache), JAX_PLATFORMS="cpu",
               JAX_RAISE_PERSISTENT_CACHE_ERRORS="true")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    read = {}
    for run in ("cold", "warm"):
        result = subprocess.run([sys.executable, "-m", "ipdrl", "train", "--algo", "dt", "--budget", "tiny", "--steps",
                                 "50", "--eval-episodes", "1", "--run-dir", str(tmp_path / run), "--no-progress"],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        read[run] = {path.name: path.read_bytes() for path in cache.rglob("*-atime")}  # JAX rewrites it on each read
    assert read["cold"] and all(read["warm"][name] != stamp for name, stamp in read["cold"].items())
    cold, warm = (tmp_path / run for run in ("cold", "warm"))
    assert (cold / "checkpoint.msgpack").read_bytes() == (warm / "checkpoint.msgpack").read_bytes()
    assert json.loads((cold / "results.json").read_text())["returns"] == json.loads(
        (warm / "results.json").read_text())["returns"]


def test_compiled_programs_are_kept_per_cpu_and_core_count_and_half_written_ones_dropped(monkeypatch, tmp_path):
    from ipdrl import host

    monkeypatch.setenv(host.COMPILATION_CACHE_ENV, str(tmp_path))
    folder = host.compilation_cache_dir()
    assert folder.parent == tmp_path and len(folder.name) == 12
    monkeypatch.setattr(host, "usable_cores", lambda: 64)
    assert host.compilation_cache_dir() not in (folder, None)
    monkeypatch.setattr(host, "cpu_name", lambda: "another CPU")
    assert len({host.compilation_cache_dir(), folder}) == 2
    monkeypatch.setenv(host.COMPILATION_CACHE_ENV, "off")
    assert host.compilation_cache_dir() is None
    # A killed writer leaves a program without its access time (JAX writes that second); JAX's own lock file stays.
    folder.mkdir()
    for name in ("whole-cache", "whole-atime", "cut-short-cache", "orphan-atime", ".lockfile"):
        (folder / name).write_bytes(b"x")
    host.drop_half_written_programs(folder)
    assert sorted(path.name for path in folder.iterdir()) == [".lockfile", "whole-atime", "whole-cache"]
