"""IPD's stages 1-3 (`ipdrl augment`) on every shared dataset, and one table of their reports.

    python benchmarks/augment_all.py [--datasets hopper-medium ...] [--budget cpu] [--out runs/evidence/augment]
                                     [--docs docs/evidence] [--report-only]

Each dataset gets ``ipdrl augment --budget cpu --dataset D --out OUT/D-mpc.hdf5`` (IQL at the ``cpu`` budget, the
ensemble, MPC augmentation), skipped when its report exists. Where the evidence runs already hold a finished IQL run
(``runs/evidence/iql/D-s0``) or a cached ensemble of the same seed (saved in the current model format; older ones
are not read), the command reuses them (``--iql-run``, ``--world-model``) rather than training them again. Writes
``--docs/augment.md``: per dataset, the model's held-out error, the branch points, accepted/rejected rollouts and
why, imagined vs real value, the imagined : real ratio and the time taken.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence import REPO, ipdrl_script, making_command, run_logged, use_shared_datasets  # noqa: E402

DATASETS = ["hopper-medium-replay", "hopper-medium", "hopper-random",
            "halfcheetah-medium-replay", "halfcheetah-medium", "halfcheetah-random"]


def current_format(model_json: Path) -> bool:
    """Whether a saved model is in the layout this ipdrl reads (older ones are refused by its loader)."""
    from ipdrl.world_models.common import FORMAT

    return json.loads(model_json.read_text()).get("format") == FORMAT


def command(dataset: str, budget: str, out: Path, evidence: Path) -> list[str]:
    flags = ["--budget", budget, "--dataset", dataset, "--out", str(out / f"{dataset}-mpc.hdf5"), "--no-progress"]
    iql_run = evidence / "iql" / f"{dataset}-s0"
    if budget == "cpu" and (iql_run / "results.json").exists():
        flags += ["--iql-run", str(iql_run)]
    models = [path for path in sorted((evidence / "ipd-cache" / f"{dataset}-s0").glob("world_model-*/model.json"))
              if current_format(path)]
    if budget == "cpu" and models:
        flags += ["--world-model", str(models[0].with_suffix(""))]
    return ["ipdrl", "augment", *flags]


def row(report: dict) -> str:
    model, rejected = report["world_model"], report["rejected"]
    cells = [
        report["dataset"], f"{report['real_transitions']:,}", f"{model['heldout_nll']:.2f}",
        f"{model['obs_delta_mse']:.3f} / {model['obs_delta_mse_baseline']:.3f}", f"{report['kappa']:.3f}",
        f"{report['branch_candidates']:,}", f"{report['rollouts']:,}", f"{report['accepted']:,}",
        f"{rejected['uncertainty']} / {rejected['termination']} / {rejected['not_better']}",
        f"{report['mean_imagined_value_accepted']:.1f} / {report['mean_real_value_accepted']:.1f}",
        f"{report['ratio_achieved']:.3f}", f"{report['seconds']:.0f}", f"{report['imagined_steps_per_second']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = ["dataset", "real transitions", "model held-out NLL", "Δs MSE (model / mean change)", "κ",
          "branch candidates", "rollouts", "accepted", "rejected: uncertainty / termination / not better",
          "V imagined / real (accepted)", "imagined : real", "augmentation s", "imagined steps/s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--out", default="runs/evidence/augment")
    parser.add_argument("--evidence", default="runs/evidence", help="where evidence.py keeps its runs")
    parser.add_argument("--docs", default="docs/evidence")
    parser.add_argument("--report-only", action="store_true", help="tabulate the finished reports, run nothing")
    args = parser.parse_args()
    os.chdir(REPO)
    use_shared_datasets()
    out, evidence = Path(args.out), Path(args.evidence)
    out.mkdir(parents=True, exist_ok=True)
    commands = {d: command(d, args.budget, out, evidence) for d in args.datasets}
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for dataset, cmd in commands.items():
        report_path = out / f"{dataset}-mpc_report.json"
        if not report_path.exists() and not args.report_only:
            run_logged([ipdrl_script(), *cmd[1:]], out / f"{dataset}-mpc.log", dataset, one_core=True, tag="augment")
        if report_path.exists():
            lines.append(row(json.loads(report_path.read_text())))
    table = "\n".join(lines)
    invocation = making_command()
    body = (f"# IPD augmentation on every shared dataset\n\nMade by `{invocation}`; `{args.budget}` budget, seed 0, "
            f"MPC mode, disagreement uncertainty with κ its 90% quantile on the dataset's own pairs. Runs:\n\n"
            + "\n".join(f"    {shlex.join(c)}" for c in commands.values())
            + "\n\nValues are in IQL's scaled-reward units; 'V imagined / real' compares the accepted imagined "
            "segments with the real continuations they replace (return over the segment plus the bootstrapped value)."
            f"\n\n{table}\n")
    Path(args.docs).mkdir(parents=True, exist_ok=True)
    (Path(args.docs) / "augment.md").write_text(body)
    print(table)


if __name__ == "__main__":
    main()
