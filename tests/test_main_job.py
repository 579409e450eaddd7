"""The README's first command, `ipdrl run`, end to end on the embedded dataset at the tiny budget."""

from __future__ import annotations

import json

import numpy as np

from ipdrl import commands, presets
from ipdrl.algos import iql
from ipdrl.commands import run as run_command
from ipdrl.data.loading import embedded_files, load_dataset


def test_embedded_dataset_is_small_and_gets_its_family_presets():
    (file,) = embedded_files()
    assert file.stat().st_size < 6 * 2**20
    dataset = load_dataset("embedded")
    assert dataset.metadata["generator"]["env"] == "Hopper-v5" and dataset.num_episodes > 10
    # 'embedded' resolves to the data it holds, so hopper's IQL settings apply
    assert presets.make_config(iql, "embedded", "cpu").reward_mode == "locomotion"


def test_run_prints_ipd_dt_iql_table(tmp_path, capsys):
    out = tmp_path / "main"
    assert commands.main(["run", "--budget", "tiny", "--seeds", "0", "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    for method in ("| IPD |", "| DT |", "| IQL |"):
        assert method in table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"IPD", "DT", "IQL"}
    assert all(row["checkpoint"] == "final" for row in summary["methods"].values())
    assert (out / "summary.md").read_text().strip() in table

    # A job trained with other settings (an older version's preset) is neither reused nor resumed: a clear error.
    saved = json.loads((out / "ipd" / "config.json").read_text())
    (out / "ipd" / "config.json").write_text(json.dumps(dict(saved, steps=saved["steps"] + 1)))
    args = run_command.Args(budget="tiny", out=str(out))
    assert not run_command.seed_done(args, 0, out)
    assert commands.main(["run", "--budget", "tiny", "--seeds", "0", "--out", str(out), "--no-progress"]) != 0
    error = capsys.readouterr().err
    assert "ipd.steps" in error and "another --out" in error


def test_run_over_seeds_trains_each_in_its_own_process_and_tables_them(tmp_path, capsys):
    """Two seeds on a 2-worker local cluster; the first seed's job is the one-seed job above, so it is reused."""
    out = tmp_path / "main"
    one = ["run", "--budget", "tiny", "--no-progress"]
    assert commands.main([*one, "--seeds", "0", "--out", str(out / "seed-0")]) == 0
    seed0 = json.loads((out / "seed-0" / "summary.json").read_text())
    capsys.readouterr()
    assert commands.main([*one, "--seeds", "0", "1", "--workers", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "training seeds 0, 1" in table and "IPD - DT" in table and "IPD - IQL" in table
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "seed-0" / "summary.json").read_text()) == seed0  # finished seeds are not rerun
    assert not (out / "seed-0" / "job.log").exists() and (out / "seed-1" / "job.log").exists()
    runs = {(r["method"], r["seed"]): r for r in summary["runs"]}
    assert set(runs) == {(m, s) for m in ("ipd", "dt", "iql") for s in (0, 1)}
    assert runs[("ipd", 0)]["normalized_score"] == seed0["methods"]["IPD"]["normalized_mean"]
    assert runs[("dt", 1)]["command"].startswith("ipdrl run --budget tiny --dataset embedded --seeds 1 ")
    assert set(summary["aggregates"]["methods"]) == {"IPD", "DT", "IQL"}
    for name, stats in summary["aggregates"]["methods"].items():
        assert stats["runs"] == 2 and stats["mean"] == np.mean([runs[(name.lower(), s)]["normalized_score"]
                                                                 for s in (0, 1)])


def test_run_refuses_repeated_seeds(capsys):
    assert commands.main(["run", "--budget", "tiny", "--seeds", "0", "0"]) != 0
    assert "distinct" in capsys.readouterr().err
