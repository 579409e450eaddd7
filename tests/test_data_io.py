"""D4RL reader/writer on real and synthetic bytes, downloads, Minari interop, bad input."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import h5py
import numpy as np
import pytest

from conftest import DATASETS, FIXTURES, synthetic_dataset
from ipdrl.commands import main as cli_main
from ipdrl.data.d4rl import download_d4rl, read_d4rl, resolve_d4rl_name, write_d4rl
from ipdrl.data.dataset import DatasetError
from ipdrl.data.loading import describe, load_dataset
from ipdrl.data.minari_io import read_minari, write_minari

KITCHEN = FIXTURES / "d4rl" / "kitchen-complete-v0.hdf5"


def test_real_kitchen_fixture_exact_figures(capsys):
    if not KITCHEN.exists():
        pytest.skip("fixture absent")
    assert hashlib.sha256(KITCHEN.read_bytes()).hexdigest() == (
        "cd797c38cd52dfbe3f960cef73935cc724847abd189e47a703a7a2315ed60a81")
    dataset = read_d4rl(KITCHEN)
    facts = describe(dataset)
    assert (facts["transitions"], facts["episodes"], facts["obs_dim"], facts["act_dim"]) == (3680, 19, 60, 9)
    assert facts["return_mean"] == pytest.approx(325.4, abs=0.05)
    assert np.all(dataset.rewards[dataset.episode_ends - 1] == 4)
    # v0 file: no next_observations stored, so successors come from within each episode only.
    assert np.array_equal(dataset.next_observations[:-1][~(dataset.terminals | dataset.timeouts)[:-1]],
                          dataset.observations[1:][~(dataset.terminals | dataset.timeouts)[:-1]])
    assert cli_main(["data", "info", str(KITCHEN)]) == 0
    out = capsys.readouterr().out
    assert "3,680" in out and "episodes     19" in out and "325.4" in out


def test_shared_hopper_medium_replay():
    if not (DATASETS / "hopper-medium-replay.hdf5").exists():
        pytest.skip("the shared benchmark datasets are not present")
    dataset = read_d4rl(DATASETS / "hopper-medium-replay.hdf5")
    assert (dataset.size, dataset.num_episodes) == (230_000, 1_671)
    assert dataset.episode_returns().mean() == pytest.approx(355.9, abs=0.05)
    assert set(dataset.infos) == {"qpos", "qvel"}
    assert dataset.metadata["generator"]["env"] == "Hopper-v5" and dataset.metadata["env"] == "Hopper-v5"


def write_raw(path, **arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def test_v0_layout_n1_arrays_float64_and_cut_last_episode(tmp_path):
    obs = np.arange(20, dtype=np.float64).reshape(10, 2)
    terminals = np.zeros((10, 1), bool)
    terminals[3] = True  # episode 0: steps 0-3; episode 1: steps 4-9, cut without a flag
    path = write_raw(tmp_path / "v0.hdf5", observations=obs, actions=np.zeros((10, 1)),
                     rewards=np.ones((10, 1)), terminals=terminals)
    dataset = read_d4rl(path)
    assert dataset.observations.dtype == np.float32 and dataset.rewards.shape == (10,)
    assert list(dataset.episode_ends) == [4, 10]
    assert np.array_equal(dataset.next_observations[0], obs[1])
    assert np.array_equal(dataset.next_observations[3], obs[3])  # terminal: successor not stored
    assert dataset.timeouts[9] and not dataset.terminals[9]  # unknown successor: truncated, not terminated
    assert list(dataset.episode_returns()) == [4.0, 6.0]


def test_write_read_round_trip_is_exact(tmp_path):
    dataset = synthetic_dataset()
    dataset = dataset.replace(infos={"qpos": np.ones((dataset.size, 6), np.float32)},
                              metadata={"env": "Hopper-v5", "generator": {"seed": 3}})
    back = read_d4rl(write_d4rl(dataset, tmp_path / "d.hdf5"))
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        assert np.array_equal(getattr(dataset, key), getattr(back, key)), key
    assert np.array_equal(back.infos["qpos"], dataset.infos["qpos"])
    assert back.metadata["generator"] == {"seed": 3} and back.name == dataset.name


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "d.hdf5"
    write_d4rl(synthetic_dataset(), target)
    before = target.read_bytes()
    monkeypatch.setattr(h5py.File, "create_dataset", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_d4rl(synthetic_dataset(seed=1), target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["d.hdf5"]


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("garbage", "not a readable HDF5"),
    ("truncated", "HDF5|truncated"),
    ("missing_key", "missing the D4RL keys"),
    ("nan", "NaN"),
    ("rows", "rows"),
])
def test_bad_files_give_clear_errors(tmp_path, case, message):
    path = tmp_path / "bad.hdf5"
    good = dict(observations=np.zeros((5, 2), np.float32), actions=np.zeros((5, 1), np.float32),
                rewards=np.zeros(5, np.float32), terminals=np.zeros(5, bool))
    if case == "garbage":
        path.write_bytes(b"this is not hdf5")
    elif case == "truncated":
        write_d4rl(synthetic_dataset(episodes=40), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "missing_key":
        write_raw(path, **{k: v for k, v in good.items() if k != "actions"})
    elif case == "nan":
        write_raw(path, **{**good, "rewards": np.array([0, np.nan, 0, 0, 0], np.float32)})
    elif case == "rows":
        write_raw(path, **{**good, "actions": np.zeros((4, 1), np.float32)})
    with pytest.raises(DatasetError, match=message):
        read_d4rl(path)


def test_unknown_names_and_cli_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IPDRL_DATASETS", str(tmp_path))
    with pytest.raises(DatasetError, match="unknown dataset 'no-such-data'.*IPDRL_DATASETS"):
        load_dataset("no-such-data")
    with pytest.raises(DatasetError, match="not an official D4RL"):
        resolve_d4rl_name("hopper-superb-v2")
    assert cli_main(["data", "info", "no-such-data"]) == 1
    assert "unknown dataset" in capsys.readouterr().err
    write_d4rl(synthetic_dataset(name="mine"), tmp_path / "mine.hdf5")
    assert load_dataset("mine").size == 100


def test_download_from_local_server_and_offline_message(tmp_path):
    served = tmp_path / "served"
    (served / "datasets/offline_rl/gym_mujoco_v2").mkdir(parents=True)
    write_d4rl(synthetic_dataset(), served / "datasets/offline_rl/gym_mujoco_v2/hopper_medium-v2.hdf5")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    import urllib.request

    def local(url, timeout):  # the official host, redirected to the local server
        return urllib.request.urlopen(url.replace("http://rail.eecs.berkeley.edu", f"http://127.0.0.1:{port}"),
                                      timeout=timeout)

    try:
        path = download_d4rl("hopper-medium-v2", cache_dir=tmp_path / "cache", urlopen=local)
    finally:
        server.shutdown()
    assert path == tmp_path / "cache" / "hopper_medium-v2.hdf5" and read_d4rl(path).size == 100
    assert download_d4rl("hopper-medium-v2", cache_dir=tmp_path / "cache", urlopen=None) == path  # cached

    def offline(url, timeout):
        return urllib.request.urlopen("http://127.0.0.1:9/nothing", timeout=timeout)

    with pytest.raises(DatasetError, match=r"offline.*put it at .*hopper_medium_replay-v2.hdf5"):
        download_d4rl("hopper-medium-replay-v2", cache_dir=tmp_path / "cache", urlopen=offline)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["hopper_medium-v2.hdf5"]


def test_minari_round_trip_and_minari_written_data(tmp_path, monkeypatch):
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    dataset = synthetic_dataset(episodes=3, length=20)
    write_minari(dataset, "test/hopper/ours-v0")
    assert minari.load_dataset("test/hopper/ours-v0").total_steps == 60
    back = load_dataset("minari:test/hopper/ours-v0")
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        assert np.array_equal(getattr(dataset, key), getattr(back, key)), key
    assert list(back.episode_ends) == list(dataset.episode_ends)

    # A dataset written by minari itself (one terminated, one truncated episode) reads back with our reader.
    rng = np.random.default_rng(0)
    buffers = [EpisodeBuffer(id=i, observations=rng.normal(size=(t + 1, 11)), actions=rng.uniform(-1, 1, (t, 3)),
                             rewards=list(rng.normal(size=t)), terminations=[False] * (t - 1) + [i == 0],
                             truncations=[False] * (t - 1) + [i == 1], infos={}) for i, t in enumerate((7, 5))]
    minari.create_dataset_from_buffers("test/hopper/theirs-v0", buffers, env="Hopper-v5", algorithm_name="x",
                                       author="t", author_email="t@example.org")
    theirs = read_minari("test/hopper/theirs-v0")
    assert theirs.size == 12 and list(theirs.episode_ends) == [7, 12]
    assert theirs.terminals[6] and theirs.timeouts[11] and theirs.metadata["env"] == "Hopper-v5"
    np.testing.assert_allclose(theirs.next_observations[:6], theirs.observations[1:7])
