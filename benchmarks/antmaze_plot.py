"""The maze with a dataset's trajectories, and with evaluation rollouts of trained runs.

    python benchmarks/antmaze_plot.py datasets/antmaze-umaze.hdf5 \\
        --runs iql=runs/sweeps/antmaze/iql/antmaze-umaze-s0 dt=runs/sweeps/antmaze/dt/antmaze-umaze-s0 \\
        --episodes 20 --out docs/evidence/antmaze-umaze.png

One panel for the data (``--data-episodes`` of its episodes, each a line of the ant's x, y), then one per run: its
final checkpoint re-evaluated from the maze's evaluation start, green where an episode reached the goal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ipdrl import antmaze, pipelines  # noqa: E402
from ipdrl.data.d4rl import read_d4rl  # noqa: E402
from ipdrl.evaluation import recording_observations  # noqa: E402


def draw_maze(ax, layout: antmaze.Maze) -> None:
    half = antmaze.CELL_SIZE / 2
    for cell in ((i, j) for i, row in enumerate(layout.grid) for j, wall in enumerate(row) if wall == 1):
        x, y = layout.cell_xy(cell)
        ax.add_patch(plt.Rectangle((x - half, y - half), 2 * half, 2 * half, color="0.6"))
    for cell, marker, label in ((layout.start, "o", "start"), (layout.goal, "*", "goal")):
        ax.plot(*layout.cell_xy(cell), marker, color="k", markersize=12, label=label)
    rows, cols = len(layout.grid), len(layout.grid[0])
    ax.set_xlim(-cols * half, cols * half)
    ax.set_ylim(-rows * half, rows * half)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--runs", nargs="*", default=[], help="name=RUN_DIR pairs")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation rollouts per run")
    parser.add_argument("--data-episodes", type=int, default=50)
    parser.add_argument("--out", default="antmaze.png")
    args = parser.parse_args()

    data = read_d4rl(args.dataset)
    layout = antmaze.maze(data.metadata["env"])
    runs = [pair.split("=", 1) for pair in args.runs]
    fig, axes = plt.subplots(1, 1 + len(runs), figsize=(4.5 * (1 + len(runs)), 4.5), squeeze=False)
    draw_maze(axes[0, 0], layout)
    starts, ends = data.episode_starts, data.episode_ends
    for start, end in list(zip(starts, ends))[: args.data_episodes]:
        axes[0, 0].plot(*data.observations[start:end, :2].T, lw=0.5, alpha=0.6)
    axes[0, 0].set_title(f"{data.name}: {min(args.data_episodes, len(starts))} of {len(starts)} episodes")
    summary = {}
    for ax, (name, run_dir) in zip(axes[0, 1:], runs):
        draw_maze(ax, layout)
        algo = json.loads((Path(run_dir) / "config.json").read_text())["algo"]
        with recording_observations() as recorded:
            result = pipelines.evaluate_run(algo, run_dir, episodes=args.episodes)
        for episode, score in zip(recorded[-1], result["returns"]):
            ax.plot(*episode[:, :2].T, lw=0.8, color="tab:green" if score > 0 else "tab:red", alpha=0.7)
        ax.set_title(f"{name}: {np.mean(result['returns']) * 100:.0f}% of {args.episodes} reach the goal")
        summary[name] = result["normalized_mean"]
    fig.tight_layout()
    fig.savefig(args.out, dpi=110, bbox_inches="tight")  # equal-aspect panels: tight_layout alone clips the titles
    print(json.dumps({"plot": args.out, "success": summary}))


if __name__ == "__main__":
    main()
