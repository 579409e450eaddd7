"""The README's first command, `ipdrl run`, end to end on the embedded dataset at the tiny budget."""

from __future__ import annotations

import json

from ipdrl import commands, presets
from ipdrl.algos import iql
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
    assert commands.main(["run", "--budget", "tiny", "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    for method in ("| IPD |", "| DT |", "| IQL |"):
        assert method in table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"IPD", "DT", "IQL"}
    assert all(row["checkpoint"] == "final" for row in summary["methods"].values())
    assert (out / "summary.md").read_text().strip() in table
