"""Sweeps on Dask and the statistics of their tables."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ipdrl import statistics, sweeps

REPO = Path(__file__).resolve().parents[1]


def test_iqm_trims_a_quarter_from_each_end():
    assert statistics.iqm([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert statistics.iqm([1.0, 1.0, 1.0]) == 1.0


def test_stratified_interval_covers_the_mean_and_shrinks_with_more_seeds():
    rng = np.random.default_rng(0)
    few = {"a": rng.normal(50, 10, 3), "b": rng.normal(20, 10, 3)}
    many = {"a": rng.normal(50, 10, 40), "b": rng.normal(20, 10, 40)}
    for scores in (few, many):
        summary = statistics.summary(scores)
        assert summary["mean_ci"][0] <= summary["mean"] <= summary["mean_ci"][1]
        assert summary["iqm_ci"][0] <= summary["iqm"] <= summary["iqm_ci"][1]
    width = lambda s: s["mean_ci"][1] - s["mean_ci"][0]
    assert width(statistics.summary(many)) < width(statistics.summary(few))
    assert np.isnan(statistics.interval({"a": [1.0]})[0])  # one seed: no interval


def test_paired_difference_is_per_seed():
    a, b = {"d": [10.0, 20.0, 30.0]}, {"d": [9.0, 19.0, 29.5]}
    diff = statistics.paired_difference(a, b)
    assert diff["mean"] == pytest.approx(2.5 / 3) and diff["mean_ci"][0] > 0  # every seed is better


def test_paired_t_interval_is_wider_than_the_bootstrap_with_few_seeds():
    """With 3 seeds the percentile bootstrap spans exactly the per-seed differences; Student's t does not."""
    a, b = {"d": [40.0, 60.0, 50.0]}, {"d": [24.4, 20.6, 28.1]}
    diff = statistics.paired_difference(a, b)
    per_seed = np.subtract(a["d"], b["d"])
    assert diff["mean_ci"] == pytest.approx([per_seed.min(), per_seed.max()])
    half = 4.302653 * per_seed.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert diff["mean_t_ci"] == pytest.approx([per_seed.mean() - half, per_seed.mean() + half], rel=1e-5)
    # a dataset with one seed gives no bootstrap interval, but the pooled t interval still exists
    one_seed = statistics.paired_difference({"x": [1.0], "y": [2.0, 3.0]}, {"x": [0.0], "y": [0.0, 0.0]})
    assert np.isnan(one_seed["mean_ci"][0]) and one_seed["mean_t_ci"][0] < 2.0 < one_seed["mean_t_ci"][1]


def test_plateau_reads_a_noisy_curve_where_it_stops_rising():
    rng = np.random.default_rng(0)
    steps = list(range(10_000, 210_000, 10_000)) * 2  # two seeds, pooled
    rising = [60 * min(s, 80_000) / 80_000 + rng.normal(0, 12) for s in steps]  # swings as wide as real checkpoints
    fit = statistics.plateau(steps, rising)
    assert not fit["flat"] and 50_000 <= fit["step"] <= 120_000 and fit["rise"] == pytest.approx(60, abs=15)
    flat = statistics.plateau(steps, [20 + rng.normal(0, 12) for _ in steps])
    assert flat["flat"] and flat["step"] == 10_000
    assert statistics.plateau([1, 2, 3], [1.0, 2.0, 3.0]) is None  # too few evaluations to say


def test_a_sweep_file_is_checked(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\ndatasets = ["embedded"]\nseeds = [0]\n[[methods]]\nname = "a"\nalgo = "bc"\n'
                    '[[methods]]\nname = "a"\nalgo = "iql"\n')
    with pytest.raises(ValueError, match="names repeat"):
        sweeps.load(path)
    path.write_text('name = "x"\ndatasets = ["embedded"]\nseed = [0]\n')
    with pytest.raises(ValueError, match="unknown sweep settings"):
        sweeps.load(path)
    path.write_text('name = "x"\ndatasets = ["embedded"]\nseeds = [0]\n[[methods]]\nname = "b"\nextends = "a"\n'
                    '[[methods]]\nname = "a"\nalgo = "bc"\n')
    with pytest.raises(ValueError, match="b extends 'a', which must be an earlier method"):
        sweeps.load(path)
    path.write_text('name = "x"\ndatasets = ["embedded"]\nseeds = [0]\n[[methods]]\nname = "a"\nalgo = "bc"\n'
                    '[[methods]]\nname = "b"\nextends = "a"\nflags = "--steps 9"\n')
    with pytest.raises(ValueError, match='b needs extends = "NAME" and flags'):
        sweeps.load(path)


def test_a_row_extends_an_earlier_one_with_its_flags_after_the_earlier_rows(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\ndatasets = ["embedded"]\nseeds = [0]\n'
                    '[[methods]]\nname = "iql"\nalgo = "iql"\n'
                    '[[methods]]\nname = "ipd"\nalgo = "ipd"\nafter = "iql"\nseeds = [1]\nflags = ["--steps", "9"]\n'
                    '[[methods]]\nname = "ipd-a0"\nextends = "ipd"\nflags = ["--alpha", "0"]\n'
                    '[[methods]]\nname = "ipd-a0-s3"\nextends = "ipd-a0"\nseeds = [3]\n'
                    '[[methods]]\nname = "d3"\nalgo = "iql"\nprogram = ["python", "d3.py"]\n'
                    '[[methods]]\nname = "d3-long"\nextends = "d3"\nflags = ["--steps", "99"]\n')
    methods = {m.name: m for m in sweeps.load(path).methods}
    assert methods["ipd-a0"] == sweeps.Method("ipd-a0", "ipd", ["--steps", "9", "--alpha", "0"], seeds=[1], after="iql")
    assert methods["ipd-a0-s3"].flags == ["--steps", "9", "--alpha", "0"] and methods["ipd-a0-s3"].seeds == [3]
    assert methods["d3-long"] == sweeps.Method("d3-long", "iql", ["--steps", "99"], program=["python", "d3.py"])


def test_the_seeds_and_datasets_flags_narrow_a_methods_own_lists_and_never_widen_them(tmp_path, capsys):
    from ipdrl.commands.sweep import main as sweep_main
    file = tmp_path / "s.toml"
    file.write_text('name = "s"\ndatasets = ["embedded", "other"]\nseeds = [0, 1, 2]\n'
                    '[[methods]]\nname = "bc"\nalgo = "bc"\n'
                    '[[methods]]\nname = "bc-own"\nalgo = "bc"\nseeds = [1, 2]\ndatasets = ["embedded", "other"]\n'
                    '[[methods]]\nname = "bc-embedded"\nalgo = "bc"\ndatasets = ["embedded"]\n')
    flags = ["--out", str(tmp_path / "out"), "--no-group-seeds", "--dry-run"]
    assert sweep_main([str(file), *flags, "--seeds", "1", "3", "--datasets", "other"]) == 0
    runs = re.findall(r"--run-dir \S+/out/(\S+)", capsys.readouterr().out)
    assert sorted(runs) == ["bc-own/other-s1", "bc/other-s1", "bc/other-s3"]


def to_run(out: str) -> int:
    """How many processes a dry run lists to run."""
    return sum(line.startswith("to run ") for line in out.splitlines())


def test_a_dry_run_for_a_cluster_groups_seeds_as_for_the_workers_it_is_told(tmp_path, capsys):
    # A dry run does not connect to --scheduler, so it cannot ask the cluster how many workers it has.
    from ipdrl.commands.sweep import main as sweep_main
    file = tmp_path / "s.toml"
    file.write_text('name = "s"\ndatasets = ["embedded"]\nseeds = [0, 1, 2, 3]\n[[methods]]\nname = "bc"\nalgo = "bc"\n')
    flags = [str(file), "--out", str(tmp_path / "out"), "--dry-run", "--scheduler", "tcp://127.0.0.1:1"]
    assert sweep_main(flags) == 0
    alone = capsys.readouterr().out
    assert "--workers N groups them" in alone and to_run(alone) == 1  # one process trains the 4 seeds
    assert sweep_main([*flags, "--workers", "2"]) == 0
    assert to_run(capsys.readouterr().out) == 2


SWEEP = """
name = "tiny"
budget = "tiny"
datasets = ["embedded"]
seeds = [0, 1]
paired = [["iql", "bc"]]

[[methods]]
name = "bc"
algo = "bc"
flags = ["--steps", "400", "--log-every", "50", "--checkpoint-every", "50", "--eval-episodes", "1"]

[[methods]]
name = "iql"
algo = "iql"
flags = ["--steps", "400", "--log-every", "50", "--checkpoint-every", "50", "--eval-episodes", "1"]
"""


def sweep_command(folder: Path) -> list[str]:
    (folder / "tiny.toml").write_text(SWEEP)
    return [sys.executable, "-m", "ipdrl", "sweep", "tiny.toml", "--workers", "2", "--out", "runs",
            "--docs", "docs", "--no-progress"]


def test_a_sweep_with_a_killed_worker_completes_to_the_results_of_an_uninterrupted_one(tmp_path):
    import psutil

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
    done = subprocess.run(sweep_command(whole), cwd=whole, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    sweep = subprocess.Popen(sweep_command(killed), cwd=killed, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    victim, deadline = None, time.monotonic() + 600
    while victim is None and sweep.poll() is None and time.monotonic() < deadline:
        for process in psutil.Process(sweep.pid).children(recursive=True):
            try:
                command = process.cmdline()
            except psutil.Error:
                continue
            run_dir = command[command.index("--run-dir") + 1] if "--run-dir" in command else None
            # a method's seeds train together: --run-dir runs/bc/embedded-s{seed}
            if run_dir and any(killed.glob(run_dir.replace("{seed}", "*") + "/checkpoint.json")):
                victim = process.parent()  # the Dask worker running this training run
                break
        time.sleep(0.05)
    assert victim is not None, "no training run to interrupt"
    os.kill(victim.pid, signal.SIGKILL)
    sweep.wait(timeout=900)
    again = subprocess.run(sweep_command(killed), cwd=killed, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]

    table = {(r["method"], r["dataset"], r["seed"]): r for r in
             json.loads((killed / "docs" / "tiny.json").read_text())["runs"]}
    reference = {(r["method"], r["dataset"], r["seed"]): r for r in
                 json.loads((whole / "docs" / "tiny.json").read_text())["runs"]}
    assert set(table) == set(reference) and len(table) == 4
    for key, row in table.items():
        assert row["episode_returns"] == reference[key]["episode_returns"], key
        run_dir = Path(row["run_dir"])
        assert (killed / run_dir / "checkpoint.msgpack").read_bytes() == \
            (whole / run_dir / "checkpoint.msgpack").read_bytes(), key
    aggregates = json.loads((killed / "docs" / "tiny.json").read_text())["aggregates"]
    assert {a["dataset"] for a in aggregates["paired"]} == {"embedded", "all"}
    assert "| iql |" in (killed / "docs" / "tiny.md").read_text()
    command = json.loads((killed / "docs" / "tiny.json").read_text())["command"]
    assert command.startswith("ipdrl sweep ") and "--docs docs" in command and "--no-progress" not in command


def test_a_table_is_not_rewritten_where_that_would_drop_results(tmp_path):
    from ipdrl import tables
    from ipdrl.sweeps import Method, Sweep

    sweep = Sweep(name="t", datasets=["d"], seeds=[0, 1], methods=[Method(name="iql", algo="iql")])
    row = lambda seed: {"method": "iql", "dataset": "d", "seed": seed, "normalized_score": 10.0 + seed,
                        "episode_scores": [10.0 + seed], "budget": "cpu", "command": "ipdrl train"}
    assert "no run" in tables.overwrite_problem(sweep, [], tmp_path)
    assert tables.overwrite_problem(sweep, [row(0)], tmp_path) is None
    tables.write_report(sweep, [row(0), row(1)], tmp_path, "ipdrl sweep t.toml")
    assert "seed 1" in tables.overwrite_problem(sweep, [row(0)], tmp_path)  # a checkout without seed 1's run
    assert "--keep-missing" in tables.overwrite_problem(sweep, [], tmp_path)  # without any: the same way out
    assert tables.overwrite_problem(sweep, [row(0), row(1)], tmp_path) is None
    (tmp_path / "t.json").unlink()
    assert "made another way" in tables.overwrite_problem(sweep, [row(0)], tmp_path)


def test_a_dataset_given_as_a_path_gets_one_run_directory_per_method(tmp_path):
    """A file path (``../shared/x.hdf5``) as a sweep dataset: run directories are named by the file's stem, inside
    each method's folder; a path joined in as is would climb out of it and every method would share one."""
    sweep = sweeps.Sweep(name="t", datasets=["../shared/fixtures/d4rl/kitchen-complete-v0.hdf5"], seeds=[0],
                         out=str(tmp_path), methods=[sweeps.Method(name="bc", algo="bc"),
                                                     sweeps.Method(name="iql", algo="iql")])
    run_dirs = [Path(task.run_dir) for task in sweeps.tasks(sweep)]
    assert run_dirs == [tmp_path / "bc" / "kitchen-complete-v0-s0", tmp_path / "iql" / "kitchen-complete-v0-s0"]
    with pytest.raises(ValueError, match="share run-directory names"):
        sweeps.Sweep(name="t", datasets=["a/x.hdf5", "b/x.hdf5"], seeds=[0],
                     methods=[sweeps.Method(name="bc", algo="bc")])


def test_a_methods_seeds_train_together_split_so_that_every_worker_has_a_job():
    from ipdrl.sweeps import Method, Sweep

    sweep = Sweep(name="t", datasets=["embedded"], seeds=[0, 1, 2, 3, 4], out="o", flags=["--steps", "9"], methods=[
        Method(name="iql", algo="iql"),
        Method(name="ipd", algo="ipd", seeds=[0, 1]),  # stages: one seed per process
        Method(name="d3", algo="iql", program=["python", "x.py"], seeds=[0, 1]),
        Method(name="per-seed", algo="bc", seeds=[0, 1], flags=["--eval-seed", "{seed}"]),
    ])
    todo = sweeps.tasks(sweep)
    grouped = [job for job in sweeps.jobs(sweep, todo, 2) if len(job.runs) > 1]
    assert len(grouped) == 1 and [t.seed for t in grouped[0].runs] == [0, 1, 2, 3, 4]
    command = list(grouped[0].command)
    assert command[command.index("--seeds") + 1:command.index("--run-dir")] == ["0", "1", "2", "3", "4"]
    assert command[command.index("--run-dir") + 1] == str(Path("o/iql/embedded-s{seed}"))
    assert command[-2:] == ["--steps", "9"] and "--seed" not in command
    assert len(sweeps.jobs(sweep, todo, 2)) == 1 + 2 + 2 + 2

    alone = Sweep(name="t", datasets=["embedded"], seeds=[0, 1, 2, 3, 4], methods=[Method(name="iql", algo="iql")])
    assert [[t.seed for t in job.runs] for job in sweeps.jobs(alone, sweeps.tasks(alone), 2)] == [[0, 1, 2], [3, 4]]
    assert [len(job.runs) for job in sweeps.jobs(alone, sweeps.tasks(alone), 8)] == [1] * 5
    alone.group_seeds = False
    assert [job.command for job in sweeps.jobs(alone, sweeps.tasks(alone), 1)] == \
        [task.command for task in sweeps.tasks(alone)]


def test_a_local_clusters_runs_keep_their_workers_share_of_the_cores_but_not_dasks_memory_trimming(tmp_path):
    from distributed import Client

    from ipdrl.commands.sweep import main as sweep_main

    assert sweeps.core_share(0, 2, [0, 1, 2, 3]) == {0, 2} and sweeps.core_share(1, 2, [0, 1, 2, 3]) == {1, 3}
    assert sweeps.core_share(2, 3, [4, 5]) == {4} and sweeps.core_share(0, 1, [4, 5]) == {4, 5}
    assert sweeps.core_share(3, 2, [0, 1, 2, 3]) == {1, 3}  # a worker added later wraps round
    with pytest.raises(SystemExit):  # a remote cluster's workers are pinned where they start, not from here
        sweep_main(["--name", "t", "--algos", "bc", "--datasets", "embedded", "--seeds", "0", "--pin-cores",
                    "--scheduler", "tcp://127.0.0.1:1"])
    cores = set(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    command = [sys.executable, "-c", "import os; print('cores', sorted(os.sched_getaffinity(0)), "
               "'trim', os.environ.get('MALLOC_TRIM_THRESHOLD_'))"]
    with sweeps.local_cluster(2, pin_cores=True) as cluster, Client(cluster) as client:
        shares = [set(share) for share in client.run(lambda: os.sched_getaffinity(0)).values()]
        trims = set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())
        futures = [client.submit(sweeps.call_logged, command, tmp_path / f"{i}.log", None, str(i), pure=False)
                   for i in range(4)]
        client.gather(futures)
    assert len(shares) == 2 and not shares[0] & shares[1] and shares[0] | shares[1] == cores
    runs = [set(json.loads(re.search(r"cores (\[.*\])", (tmp_path / f"{i}.log").read_text()).group(1)))
            for i in range(4)]
    assert all(run in shares for run in runs)
    # Dask's workers trim freed memory eagerly, which slows XLA; the runs they start do not inherit it
    assert trims == {"65536"} and all("trim None" in (tmp_path / f"{i}.log").read_text() for i in range(4))
    with sweeps.local_cluster(2) as cluster, Client(cluster) as client:  # unpinned by default
        assert all(set(share) == cores for share in client.run(lambda: os.sched_getaffinity(0)).values())


def test_a_run_without_per_episode_scores_is_named_with_the_command_that_fixes_it(tmp_path):
    sweep = sweeps.Sweep(name="t", datasets=["d"], seeds=[0], out=str(tmp_path),
                         methods=[sweeps.Method(name="iql", algo="iql")])
    [task] = sweeps.tasks(sweep)
    Path(task.run_dir).mkdir(parents=True)
    results = {"normalized_mean": 12.0, "normalized_scores": [11.0, 13.0], "steps": 5}
    (Path(task.run_dir) / "results.json").write_text(json.dumps(results))
    assert sweeps.run_row(task)["episode_scores"] == [11.0, 13.0]
    (Path(task.run_dir) / "results.json").write_text(json.dumps({**results, "normalized_scores": None}))
    with pytest.raises(ValueError, match=re.escape(f"ipdrl eval {task.run_dir} --save")):
        sweeps.run_row(task)
    unscored = {"normalized_mean": None, "normalized_scores": None, "return_mean": 5.0}  # no reference table
    (Path(task.run_dir) / "results.json").write_text(json.dumps(unscored))
    assert sweeps.run_row(task)["normalized_score"] is None


def test_a_one_seed_table_writes_its_missing_intervals_as_null_so_strict_json_readers_accept_it(tmp_path):
    from ipdrl import tables

    sweep = sweeps.Sweep(name="t", datasets=["d"], seeds=[0], methods=[sweeps.Method(name="iql", algo="iql")])
    row = {"method": "iql", "dataset": "d", "seed": 0, "normalized_score": 10.0, "episode_scores": [10.0],
           "budget": "cpu", "command": "ipdrl train"}
    tables.write_report(sweep, [row], tmp_path, "ipdrl sweep t.toml")

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    table = json.loads((tmp_path / "t.json").read_text(), parse_constant=refuse)
    [cell] = table["aggregates"]["per_dataset"]
    assert cell["mean"] == 10.0 and cell["mean_ci"] == [None, None]
    assert "10.0" in (tmp_path / "t.md").read_text()


def test_a_finished_run_whose_preset_changed_is_named_and_retrained_only_when_asked(tmp_path, monkeypatch, capsys):
    """A preset that changes after a run finished (ReBRAC's AntMaze budget did) must not leave the old run in the
    table unnoticed: the sweep names it and what changed, and moves it aside to train it again only when asked."""
    from ipdrl.algos import get_algorithm
    from ipdrl.commands.sweep import main as sweep_main
    from ipdrl.pipelines import config_dict, parse_train_args

    sweep = sweeps.Sweep(name="t", datasets=["embedded"], seeds=[0], out=str(tmp_path / "out"), methods=[
        sweeps.Method(name="bc", algo="bc"),
        sweeps.Method(name="bc-after", algo="bc", after="bc", flags=["--steps", "50"]),  # not the preset's
        sweeps.Method(name="other", algo="bc", program=["python", "other.py"])])
    first, second, other = sweeps.tasks(sweep)
    for task in (first, second, other):
        Path(task.run_dir).mkdir(parents=True)
        command = (task if task is not other else first).command
        parsed = parse_train_args(list(command[len(sweeps.IPDRL_TRAIN):]))
        (Path(task.run_dir) / "config.json").write_text(json.dumps(config_dict("bc", parsed.config)))
        (Path(task.run_dir) / "results.json").write_text(json.dumps({"normalized_mean": None}))
    assert sweeps.stale_runs(sweep) == {} and sweeps.handle_stale(sweep) == []
    sweeps.record_base(second)  # started before runs recorded their base: not given today's, judged by file times
    assert not Path(second.run_dir, "base.json").exists()

    steps = get_algorithm("bc").budgets["cpu"]["steps"]
    monkeypatch.setitem(get_algorithm("bc").budgets["cpu"], "steps", steps + 1)
    stale = sweeps.stale_runs(sweep)  # another program's run is not ipdrl's to judge
    assert stale == {first: f"steps {steps} -> {steps + 1}",
                     second: f"it comes after {first.run_dir}, which is stale"}
    flags = ["--out", sweep.out, "--datasets", "embedded", "--seeds", "0", "--docs", str(tmp_path / "docs")]
    file = tmp_path / "t.toml"
    file.write_text('name = "t"\ndatasets = ["embedded"]\nseeds = [0]\n[[methods]]\nname = "bc"\nalgo = "bc"\n'
                    '[[methods]]\nname = "bc-after"\nalgo = "bc"\nafter = "bc"\n'
                    'flags = ["--steps", "50"]\n')
    assert sweep_main([str(file), *flags, "--report-only"]) == 1
    refused = capsys.readouterr().err
    assert f"{first.run_dir}: steps {steps} -> {steps + 1}" in refused and "--retrain-stale" in refused
    assert not (tmp_path / "docs" / "t.json").exists()
    assert sweep_main([str(file), *flags, "--dry-run", "--retrain-stale"]) == 0
    assert capsys.readouterr().out.count("to run ") == 2
    assert sweep_main([str(file), *flags, "--report-only", "--keep-stale"]) == 0
    assert len(json.loads((tmp_path / "docs" / "t.json").read_text())["runs"]) == 2

    moved = sweeps.handle_stale(sweep, "retrain")
    assert len(moved) == 2 and not first.done() and not second.done() and other.done()
    assert all((path / "results.json").exists() and ".stale" in path.parts for path in moved)

    # the base trained again after the run that comes after it: that run is stale, even with only its method asked
    for task, when in ((second, 1), (first, 2)):
        Path(task.run_dir).mkdir(parents=True)
        parsed = parse_train_args(list(task.command[len(sweeps.IPDRL_TRAIN):]))
        (Path(task.run_dir) / "config.json").write_text(json.dumps(config_dict("bc", parsed.config)))
        for name in ("results.json", "checkpoint.msgpack"):
            (Path(task.run_dir) / name).write_text("{}")
            os.utime(Path(task.run_dir) / name, (when, when))
    os.utime(Path(first.run_dir) / "results.json", (3, 3))  # re-evaluated (`ipdrl eval --save`), not retrained
    sweep.methods = sweep.methods[1:2]
    assert list(sweeps.stale_runs(sweep).values()) == [
        f"{first.run_dir}/checkpoint.msgpack was written after it: its bc run was trained again"]
    os.utime(Path(first.run_dir) / "checkpoint.msgpack", (0, 0))
    assert sweeps.stale_runs(sweep) == {}


def test_a_run_after_another_records_the_checkpoint_it_started_from_so_a_copied_sweep_is_judged_by_contents(
        tmp_path, capsys):
    """Run directories kept in git or copied to another machine get new file times, so the base of a run (IPD's IQL)
    can look newer than the run after it. The run records its base checkpoint's SHA-256 when it starts: a copy is
    not stale, a base trained again is, and a table's carried row is kept only after the same base."""
    from ipdrl.commands.sweep import main as sweep_main
    from ipdrl.pipelines import config_dict, parse_train_args

    file = tmp_path / "t.toml"
    file.write_text('name = "t"\ndatasets = ["embedded"]\nseeds = [0]\n[[methods]]\nname = "bc"\nalgo = "bc"\n'
                    '[[methods]]\nname = "bc-after"\nalgo = "bc"\nafter = "bc"\nflags = ["--steps", "50"]\n')
    sweep = sweeps.load(file)
    sweep.out = str(tmp_path / "here")
    base, after = sweeps.tasks(sweep)

    def config(task):
        return json.dumps(config_dict("bc", parse_train_args(list(task.command[len(sweeps.IPDRL_TRAIN):])).config))

    Path(base.run_dir).mkdir(parents=True)
    Path(base.run_dir, "config.json").write_text(config(base))
    Path(base.run_dir, "checkpoint.msgpack").write_bytes(b"trained once")
    Path(base.run_dir, "results.json").write_text(json.dumps({"normalized_mean": 1.0, "normalized_scores": [1.0]}))
    trains = ("import json, pathlib; run = pathlib.Path(%r); (run / 'config.json').write_text(%r); "
              "(run / 'results.json').write_text(json.dumps({'normalized_mean': 2.0, 'normalized_scores': [2.0]}))"
              % (after.run_dir, config(after)))
    with pytest.raises(RuntimeError):  # a start that fails before training: its record must not outlive it
        sweeps.run_job(sweeps.Job((after,), (sys.executable, "-c", "raise SystemExit(1)")))
    Path(base.run_dir, "checkpoint.msgpack").write_bytes(b"trained twice")
    [row] = sweeps.run_job(sweeps.Job((after,), (sys.executable, "-c", trains)))
    assert row["base_weights_sha256"] == sweeps.weights_digest(base.run_dir) is not None
    sweeps.record_base(after)  # it has trained: its record stays what it started from
    Path(base.run_dir, "model.msgpack").write_bytes(b"DWM-MPC's models are weights too")
    assert sweeps.weights_digest(base.run_dir) != row["base_weights_sha256"]
    assert json.loads(Path(after.run_dir, "base.json").read_text())["weights_sha256"] == row["base_weights_sha256"]
    Path(base.run_dir, "model.msgpack").unlink()

    sweep.out = str(tmp_path / "copy")  # a fresh clone: the base's checkpoint is now the newest file of all
    shutil.copytree(tmp_path / "here", sweep.out)
    base, after = sweeps.tasks(sweep)
    os.utime(Path(after.run_dir, "results.json"), (1, 1))
    assert sweeps.stale_runs(sweep) == {}
    flags = ["--out", sweep.out, "--docs", str(tmp_path / "docs"), "--report-only"]
    assert sweep_main([str(file), *flags]) == 0
    shutil.rmtree(after.run_dir)  # its row is only in the table now, its base is here
    assert sweep_main([str(file), *flags, "--keep-missing"]) == 0
    assert [r.get("carried", False) for r in json.loads((tmp_path / "docs" / "t.json").read_text())["runs"]] == [
        False, True]

    Path(base.run_dir, "checkpoint.msgpack").write_bytes(b"trained again")
    assert sweep_main([str(file), *flags, "--keep-missing"]) == 1
    assert "it comes after the bc run of its seed, which was trained here" in capsys.readouterr().err
    shutil.copytree(tmp_path / "here" / "bc-after", Path(sweep.out) / "bc-after", dirs_exist_ok=True)
    assert sweeps.stale_runs(sweep) == {
        after: f"{base.run_dir} holds other weights than it started from: its bc run was trained again"}
    Path(after.run_dir, "base.json").write_text("[]")
    with pytest.raises(ValueError, match="base.json is not a base record written by `ipdrl sweep`"):
        sweeps.stale_runs(sweep)


def test_a_table_finished_on_another_machine_keeps_the_rows_whose_runs_are_not_here_once_checked(
        tmp_path, monkeypatch, capsys):
    """Run directories do not travel between machines, tables do: seed 1 trained here joins seed 0's rows from the
    committed table with `--keep-missing`; a kept row trained under an older preset, or after a run trained here
    instead of with it, is refused, not tabulated."""
    from ipdrl.algos import get_algorithm
    from ipdrl.commands.sweep import main as sweep_main
    from ipdrl.pipelines import config_dict, parse_train_args

    out, docs = tmp_path / "out", tmp_path / "docs"
    file = tmp_path / "t.toml"
    file.write_text('name = "t"\ndatasets = ["embedded"]\nseeds = [0, 1]\n[[methods]]\nname = "bc"\nalgo = "bc"\n'
                    '[[methods]]\nname = "bc-after"\nalgo = "bc"\nafter = "bc"\nflags = ["--steps", "50"]\n')
    sweep = sweeps.load(file)
    sweep.out = str(out)
    for task in sweeps.tasks(sweep):
        Path(task.run_dir).mkdir(parents=True)
        parsed = parse_train_args(list(task.command[len(sweeps.IPDRL_TRAIN):]))
        (Path(task.run_dir) / "config.json").write_text(json.dumps(config_dict("bc", parsed.config)))
        (Path(task.run_dir) / "results.json").write_text(json.dumps(
            {"normalized_mean": 10.0 + task.seed, "normalized_scores": [10.0 + task.seed], "steps": 1}))
    flags = ["--out", str(out), "--docs", str(docs), "--report-only"]
    assert sweep_main([str(file), *flags]) == 0
    written = docs.joinpath("t.json").read_bytes()
    assert json.loads(written)["runs"][0]["settings"]["seed"] == 0

    def move_away(method, seed):  # to "another machine"
        Path(out, method, f"embedded-s{seed}").rename(tmp_path / f"elsewhere-{method}-{seed}")

    move_away("bc", 0), move_away("bc-after", 0)
    assert sweep_main([str(file), *flags]) == 1  # it would drop seed 0
    assert "--keep-missing keeps" in capsys.readouterr().err
    assert sweep_main([str(file), *flags, "--seeds", "1", "--keep-missing"]) == 1  # narrowed: not the flag's to fix
    assert "Tabulate the whole sweep" in capsys.readouterr().err and docs.joinpath("t.json").read_bytes() == written
    with pytest.raises(SystemExit):  # a sweep that trains has no missing runs
        sweep_main([str(file), *flags[:-1], "--keep-missing"])
    assert "--keep-missing goes with --report-only" in capsys.readouterr().err

    assert sweep_main([str(file), *flags, "--keep-missing"]) == 0
    table = json.loads(docs.joinpath("t.json").read_text())
    assert [(r["method"], r["seed"], r.get("carried", False)) for r in table["runs"]] == [
        ("bc", 0, True), ("bc", 1, False), ("bc-after", 0, True), ("bc-after", 1, False)]  # in the sweep's order
    assert table["aggregates"]["per_dataset"][0]["scores"] == [10.0, 11.0]
    assert "2 of these runs were finished on another machine" in docs.joinpath("t.md").read_text()
    assert "--keep-missing" not in table["command"]
    written = docs.joinpath("t.json").read_bytes()

    def refused(why):
        assert sweep_main([str(file), *flags, "--keep-missing"]) == 1
        assert why in capsys.readouterr().err and docs.joinpath("t.json").read_bytes() == written

    Path(out, "bc", "embedded-s0").mkdir()  # a run started here and not finished: the finished row is kept
    assert sweep_main([str(file), *flags, "--keep-missing"]) == 0 and docs.joinpath("t.json").read_bytes() == written
    Path(out, "bc", "embedded-s0", "results.json").write_text(json.dumps(  # its base trained again here, the row after
        {"normalized_mean": 1.0, "normalized_scores": [1.0]}))          # it was not
    refused("bc-after embedded seed 0: it comes after the bc run of its seed, which was trained here")
    shutil.rmtree(Path(out, "bc", "embedded-s0"))
    steps = get_algorithm("bc").budgets["cpu"]["steps"]
    monkeypatch.setitem(get_algorithm("bc").budgets["cpu"], "steps", steps + 1)
    move_away("bc", 1)  # stale too, and no longer here either: only the kept rows are judged here
    refused(f"bc embedded seed 0: steps {steps} -> {steps + 1}")
    monkeypatch.setitem(get_algorithm("bc").budgets["cpu"], "steps", steps)
    rows = json.loads(written)
    for row in rows["runs"]:  # rows from before tables kept settings: their budget is all there is to check
        row.update(settings=None, budget="quick" if row["seed"] == 0 and row["method"] == "bc" else "cpu")
    docs.joinpath("t.json").write_text(json.dumps(rows))
    written = docs.joinpath("t.json").read_bytes()
    refused("bc embedded seed 0: budget 'quick' -> 'cpu'")
    for row in rows["runs"]:  # ... and their number of updates
        row.update(budget="cpu", steps=steps if row["method"] == "bc" else 50)
    rows["runs"][0]["steps"] = 10
    docs.joinpath("t.json").write_text(json.dumps(rows))
    written = docs.joinpath("t.json").read_bytes()
    refused(f"bc embedded seed 0: steps 10 -> {steps}")
    rows["runs"][0]["steps"] = steps
    docs.joinpath("t.json").write_text(json.dumps(rows))
    assert sweep_main([str(file), *flags, "--keep-missing"]) == 0


def test_a_table_says_when_runs_of_one_dataset_trained_on_different_data(tmp_path):
    from ipdrl import tables

    sweep = sweeps.Sweep(name="t", datasets=["d"], seeds=[0, 1], methods=[sweeps.Method(name="iql", algo="iql")])
    row = lambda seed, data: {"method": "iql", "dataset": "d", "seed": seed, "normalized_score": 1.0,
                              "episode_scores": [1.0], "budget": "cpu", "command": "c", "dataset_fingerprint": data}
    same = [row(0, "aa"), row(1, "aa")]
    assert "versions" not in tables.markdown(sweep, same, tables.aggregate(sweep, same), "c")
    rows = [row(0, "aa"), row(1, "bb")]
    assert "2 version(s) of its data: `aa` (iql seed 0); `bb` (iql seed 1)." in tables.markdown(
        sweep, rows, tables.aggregate(sweep, rows), "c")
    rows = [row(0, None), row(1, "bb")]  # a row from before runs recorded it: the table cannot vouch for it
    assert "1 version(s) of its data: `bb` (iql seed 1); not recorded (iql seed 0: trained before" in tables.markdown(
        sweep, rows, tables.aggregate(sweep, rows), "c")


def test_narrowing_a_sweep_cannot_start_a_run_before_its_base_or_repeat_a_seed(tmp_path):
    from ipdrl.commands.sweep import main as sweep_main
    from ipdrl.sweeps import Method, Sweep

    sweep = Sweep(name="t", datasets=["embedded"], seeds=[0], out=str(tmp_path),
                  methods=[Method(name="iql", algo="iql"), Method(name="ipd", algo="ipd", after="iql")])
    sweep.methods = sweep.methods[1:]  # what --methods ipd leaves
    with pytest.raises(ValueError, match=r"comes after iql, whose run .*iql/embedded-s0 has not finished"):
        sweeps.run(sweep, progress=False)
    braces = Sweep(name="t", datasets=["embedded"], seeds=[0, 1], methods=[
        Method(name="bc", algo="bc", flags=["--note", "s{seed:03d}"]), Method(name="b2", algo="bc", flags=["{nope}"])])
    assert not sweeps._trains_seeds_together(braces.methods[0], [])  # a seed with a format spec is per seed too
    with pytest.raises(ValueError, match=r"b2's flag '\{nope\}' cannot be filled in"):
        sweeps.tasks(braces)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match="A sweep needs name"):
        sweeps.load(tmp_path / "empty.yaml")
    with pytest.raises(ValueError, match=r"seeds \[1, 1\] repeat a seed"):
        Sweep(name="t", datasets=["embedded"], seeds=[1, 1], methods=[Method(name="bc", algo="bc")])
    (tmp_path / "t.toml").write_text('name = "t"\ndatasets = ["embedded"]\nseeds = [0, 1]\n'
                                     '[[methods]]\nname = "bc"\nalgo = "bc"\n')
    with pytest.raises(ValueError, match=r"seeds \[2, 2\] repeat"):  # checked again after the flags replace a list
        sweep_main([str(tmp_path / "t.toml"), "--seeds", "2", "2", "--dry-run"])


def test_a_sweep_on_a_cluster_gives_its_workers_absolute_paths(tmp_path, monkeypatch):
    from ipdrl.sweeps import Method, Sweep

    monkeypatch.chdir(tmp_path)  # a cluster's workers start elsewhere, so "runs/..." would be theirs, not ours
    sweep = Sweep(name="t", datasets=["embedded"], seeds=[0], out="runs/t",
                  methods=[Method(name="iql", algo="iql"), Method(name="bc", algo="bc", after="iql")])
    sweep.methods = sweep.methods[1:]  # --methods bc: its base left out, and finished (below)
    Path("runs/t/iql/embedded-s0").mkdir(parents=True)
    Path("runs/t/iql/embedded-s0/results.json").write_text("{}")
    [task] = sweeps.tasks(sweep)
    Path(task.run_dir).mkdir(parents=True)
    (Path(task.run_dir) / "results.json").write_text(json.dumps({"normalized_mean": 1.0, "normalized_scores": [1.0]}))
    rows, failures = sweeps.run(sweep, scheduler="tcp://127.0.0.1:1", progress=False)  # nothing left to submit
    assert not failures and rows[0]["run_dir"] == str(tmp_path / "runs" / "t" / "bc" / "embedded-s0")


def test_a_dataset_only_one_method_runs_on_gets_its_own_column():
    from ipdrl import tables
    from ipdrl.sweeps import Method, Sweep

    sweep = Sweep(name="t", datasets=["a"], seeds=[0, 1], methods=[
        Method(name="m1", algo="bc"), Method(name="m2", algo="bc", datasets=["a", "b"])])
    rows = [{"method": m, "dataset": d, "seed": s, "normalized_score": 10.0 * s + (d == "b") * 40}
            for m, d in [("m1", "a"), ("m2", "a"), ("m2", "b")] for s in (0, 1)]
    aggregates = tables.aggregate(sweep, rows)
    assert [(c["method"], c["dataset"]) for c in aggregates["per_dataset"]] == [("m1", "a"), ("m2", "a"), ("m2", "b")]
    header = tables.markdown(sweep, rows, aggregates, "ipdrl sweep t").splitlines()[4]
    assert header == "| method | a | b | all |"  # m2's "all" counts b, so b is shown, not hidden
