"""``ipdrl augment``: IPD's stages 1-3 alone, on the same stage loaders as ``ipdrl train --algo ipd``; writes the
augmented dataset (D4RL hdf5) and ``<out>_report.json`` / ``<out>_report.png``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from ipdrl import augmentation, envs, presets
from ipdrl.algos import get_algorithm, ipd_stages
from ipdrl.augmentation import AugmentConfig
from ipdrl.config import RunConfig
from ipdrl.data.d4rl import write_d4rl
from ipdrl.data.loading import load_dataset
from ipdrl.pipelines import config_dict, prepare
from ipdrl.presets import BUDGET_NAMES, dataset_key
from ipdrl.runs import Run
from ipdrl.storage import atomic_write_json
from ipdrl.world_models import ensemble
from ipdrl.world_models.ensemble import EnsembleConfig

log = logging.getLogger("ipdrl")


@dataclasses.dataclass
class AugmentArgs:
    """ipdrl augment: MPC imaginary augmentation of a dataset (IPD stages 1-3)."""

    dataset: str = "embedded"
    """Dataset to augment: a .hdf5 path, a name in $IPDRL_DATASETS, 'embedded', 'minari:<id>' or a D4RL name."""
    env: str | None = None
    """Gymnasium id whose action bounds the dataset's actions are in; default: from its metadata or name."""
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


def main(argv: list[str]) -> int:
    """``ipdrl augment [--budget tiny|cpu|paper] --dataset D [--iql-run DIR] [--world-model PATH] --out FILE``."""
    import tyro

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--budget", default="cpu", choices=BUDGET_NAMES)
    known, rest = pre.parse_known_args(argv)
    default = AugmentArgs(augment=AugmentConfig(**augmentation.BUDGETS[known.budget]),
                          model=EnsembleConfig(**ensemble.BUDGETS[known.budget]))
    args = tyro.cli(AugmentArgs, default=default, args=rest, prog=f"ipdrl augment --budget {known.budget}",
                    description=(__doc__ or "").strip().splitlines()[0])
    out = Path(args.out or f"augmented/{dataset_key(args.dataset)}-{args.augment.mode}.hdf5")
    # Augmentation runs in the policies' [-1, 1] actions; the written file is in the environment's units again.
    env_id, dataset = prepare(RunConfig(dataset=args.dataset, env=args.env), load_dataset(args.dataset))

    if args.iql_run:  # stage 1: a finished IQL run, or IQL trained (or resumed) in --iql-dir
        iql_settings, iql_state, iql_info = ipd_stages.load_iql_run(args.iql_run, dataset)
        if dataset_key(iql_info["trained_on"]) != dataset_key(args.dataset):
            log.warning("--iql-run was trained on %s, augmenting %s", iql_info["trained_on"], args.dataset)
    else:
        iql = get_algorithm("iql")
        iql_settings = presets.make_config(iql, args.dataset, args.iql_budget or known.budget, seed=args.seed,
                                           progress=args.progress)
        run = Run.create(Path(args.iql_dir) if args.iql_dir else out.with_name(f"{out.stem}_iql"),
                         config_dict("iql", iql_settings), resume=True)
        iql_state, _ = ipd_stages.value_stage(iql_settings, dataset, iql_settings, run, None)
        iql_info = {"iql_run": str(run.path), "steps": iql_settings.steps}
    values = ipd_stages.value_functions(iql_settings, iql_state, dataset.act_dim)

    model, model_info = ipd_stages.world_model_stage(args.model, dataset, args.seed, args.progress,
                                                     args.world_model or out.with_name(f"{out.stem}_world_model"))
    progress_file = out.with_name(f"{out.stem}_progress.pkl")  # an interrupted augmentation resumes from here
    augmented, report = augmentation.augment(dataset, values, model, args.augment, args.seed, args.progress,
                                             progress_file)
    write_d4rl(augmented.replace(actions=envs.action_bounds(env_id).to_env(augmented.actions)), out)
    progress_file.unlink(missing_ok=True)
    report = {"dataset": dataset.name, "out": str(out), "budget": known.budget, "seed": args.seed, "iql": iql_info,
              "world_model": model_info["report"], "config": dataclasses.asdict(args.augment), **report}
    atomic_write_json(out.with_name(f"{out.stem}_report.json"), report)
    augmentation.plot_report(report, out.with_name(f"{out.stem}_report.png"))
    print(json.dumps({k: v for k, v in report.items() if k not in ("plot_data", "world_model", "config")}, indent=2))
    return 0
