"""Run directories: TensorBoard events, metrics across a resume, files that stay whole when a process is killed."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ipdrl.runs import Run

REPO = Path(__file__).resolve().parents[1]


def tensorboard_scalars(folder: Path) -> dict[str, list[int]]:
    """Every (tag -> steps) in the TFRecord event files of ``folder``, read back record by record."""
    from tensorboardX.proto import event_pb2

    steps: dict[str, list[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(int(event.step))
    return steps


def test_tensorboard_keeps_every_logged_step_once_across_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    monkeypatch.setenv("IPDRL_TENSORBOARD", "1")
    run = Run.create(tmp_path / "run", {"algo": "test"})
    for step in (1000, 2000, 3000, 4000):  # logged well within a second, as fast learners do
        run.log_metrics(step, {"train/loss": 1.0 / step})
    # Killed after step 4000 with the checkpoint at 2000: the resumed run logs 3000 and 4000 again.
    resumed = Run.create(tmp_path / "run", {"algo": "test"}, resume=True)
    resumed.truncate_metrics(2000)
    for step in (3000, 4000, 5000):
        resumed.log_metrics(step, {"train/loss": 2.0 / step})
    resumed.close()
    assert tensorboard_scalars(tmp_path / "run" / "tensorboard") == {"train/loss": [1000, 2000, 3000, 4000, 5000]}
    assert [row["step"] for row in resumed.metrics()] == [1000, 2000, 3000, 4000, 5000]


def test_a_resumed_stage_drops_only_its_own_later_rows(tmp_path):
    run = Run.create(tmp_path / "run", {"algo": "test"})
    run.log_metrics(100, {"iql_train/loss": 1.0})
    for step in (50, 100, 150):
        run.log_metrics(step, {"policy_train/loss": float(step)})
    run.truncate_metrics(100, stage="policy_")
    assert [(row["step"], next(iter(set(row) - {"step"}))) for row in run.metrics()] == [
        (100, "iql_train/loss"), (50, "policy_train/loss"), (100, "policy_train/loss")]


def test_a_line_cut_short_by_a_killed_process_is_not_read(tmp_path):
    run = Run.create(tmp_path / "run", {"algo": "test"})
    run.log_metrics(10, {"train/loss": 1.0})
    with open(tmp_path / "run" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 20, "train/lo')
    assert run.metrics() == [{"step": 10, "train/loss": 1.0}]


# ---- kill -9 at random points: every run resumes to the identical result, no file is ever half written -------
def readable(folder: Path) -> None:
    """Every file the library wrote in ``folder`` parses completely (temporary files aside)."""
    import flax.serialization
    import h5py

    for path in folder.rglob("*"):
        if not path.is_file() or path.name.startswith(".") or path.suffix == ".tmp":
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".msgpack":
            flax.serialization.msgpack_restore(path.read_bytes())
        elif path.suffix in (".hdf5", ".h5"):
            with h5py.File(path, "r") as handle:
                handle.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
        elif path.suffix == ".npz":
            with np.load(path) as arrays:
                [arrays[k] for k in arrays.files]
        elif path.suffix == ".csv":
            lines = path.read_text().splitlines()
            assert lines and all(line.count(",") == lines[0].count(",") for line in lines), path


def kill_at_random_points(command: list[str], progress_file: Path, cwd: Path, kills: int, seed: int) -> None:
    """Run ``command`` ``kills`` times, each killed with SIGKILL a random moment after ``progress_file`` appears or
    changes, checking every file after each kill; then once more to the end."""
    rng = np.random.default_rng(seed)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    interrupted = 0
    for _ in range(kills):
        before = progress_file.read_bytes() if progress_file.exists() else None
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while (not progress_file.exists() or progress_file.read_bytes() == before) and process.poll() is None:
            assert time.monotonic() < deadline, "no progress within 4 minutes"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            interrupted += 1
        process.wait()
        readable(cwd)
    assert interrupted == kills, "the job finished before it could be killed: give it more work"
    finished = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    readable(cwd)


def test_a_training_run_killed_at_random_points_resumes_to_the_identical_result(tmp_path):
    train = [sys.executable, "-m", "ipdrl", "train", "--algo", "iql", "--budget", "tiny", "--steps", "6000",
             "--log-every", "100", "--checkpoint-every", "300", "--eval-episodes", "1", "--no-progress"]
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    subprocess.run(train + ["--run-dir", "run"], cwd=tmp_path / "whole", check=True, capture_output=True,
                   env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)), timeout=600)
    kill_at_random_points(train + ["--run-dir", "run", "--resume"], tmp_path / "killed" / "run" / "checkpoint.json",
                          tmp_path / "killed", kills=3, seed=0)
    whole, killed = tmp_path / "whole" / "run", tmp_path / "killed" / "run"
    assert (whole / "checkpoint.msgpack").read_bytes() == (killed / "checkpoint.msgpack").read_bytes()
    assert json.loads((whole / "results.json").read_text())["returns"] == \
        json.loads((killed / "results.json").read_text())["returns"]
    assert [r["step"] for r in Run.open(killed).metrics()] == list(range(100, 6001, 100))


def test_dataset_generation_killed_at_random_points_resumes_to_the_identical_dataset(tmp_path):
    from ipdrl.data.d4rl import read_d4rl

    generate = [sys.executable, "-m", "ipdrl", "data", "generate", "--env", "Hopper-v5", "--level",
                "medium-replay", "--threshold", "-1e9", "--start-steps", "200", "--eval-every", "3000",
                "--eval-episodes", "1", "--checkpoint-every", "200", "--hidden-dims", "32", "32",
                "--batch-size", "32", "--max-sac-steps", "3000", "--no-progress"]
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    subprocess.run(generate + ["--output", "data.hdf5"], cwd=tmp_path / "whole", check=True, capture_output=True,
                   env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)), timeout=600)
    kill_at_random_points(generate + ["--output", "data.hdf5", "--resume"],
                          tmp_path / "killed" / "data.work" / "checkpoint.npz", tmp_path / "killed", kills=3, seed=1)
    whole, killed = read_d4rl(tmp_path / "whole" / "data.hdf5"), read_d4rl(tmp_path / "killed" / "data.hdf5")
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(whole, key), getattr(killed, key))


def test_a_run_being_trained_is_not_resumed_by_a_second_process_until_it_has_its_results(tmp_path):
    run = Run.create(tmp_path / "run", {"algo": "test"})
    Run.create(tmp_path / "run", {"algo": "test"}, resume=True)  # the same process may open it again
    second = [sys.executable, "-c", f"from ipdrl.runs import Run; Run.create({str(tmp_path / 'run')!r}, "
              f"{{'algo': 'test'}}, resume=True); print('resumed')"]
    refused = subprocess.run(second, capture_output=True, text=True, cwd=REPO)
    assert refused.returncode != 0 and f"is being trained by process {os.getpid()}" in refused.stderr
    run.save_results({"score": 1.0})
    assert subprocess.run(second, capture_output=True, text=True, cwd=REPO).stdout.strip() == "resumed"
