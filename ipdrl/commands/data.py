"""``ipdrl data info | generate | export-minari``."""

from __future__ import annotations

import argparse
import json

from ipdrl.data.loading import describe, format_description, load_dataset


def info_main(argv: list[str]) -> int:
    """``ipdrl data info DATASET [--json]``."""
    parser = argparse.ArgumentParser(prog="ipdrl data info", description="Describe a dataset.")
    parser.add_argument("dataset", help="path, local name, 'embedded', 'minari:<id>' or D4RL name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    facts = describe(load_dataset(args.dataset))
    print(json.dumps(facts, indent=2) if args.json else format_description(facts))
    return 0


def generate_main(argv: list[str]) -> int:
    """``ipdrl data generate --env ENV --level LEVEL ...`` (every setting: ``--help``)."""
    import tyro

    from ipdrl.data.d4rl import read_d4rl
    from ipdrl.data.generator import GenerateConfig, generate

    config = tyro.cli(GenerateConfig, args=argv, prog="ipdrl data generate",
                      description="Generate a D4RL-style dataset with the D4RL recipe (JAX SAC behaviour agent).")
    path = generate(config)
    print(f"wrote {path}\n{format_description(describe(read_d4rl(path)))}")
    return 0


def export_main(argv: list[str]) -> int:
    """``ipdrl data export-minari DATASET MINARI_ID [--env ENV] [--root DIR]``."""
    from ipdrl.data.minari_io import write_minari

    parser = argparse.ArgumentParser(prog="ipdrl data export-minari", description="Export a dataset to Minari.")
    parser.add_argument("dataset")
    parser.add_argument("minari_id", help="e.g. mujoco/hopper/ipdrl-medium-v0")
    parser.add_argument("--env", default=None, help="Gymnasium id recorded in the Minari dataset")
    parser.add_argument("--root", default=None, help="Minari datasets root (default: MINARI_DATASETS_PATH)")
    args = parser.parse_args(argv)
    path = write_minari(load_dataset(args.dataset), args.minari_id, args.env, args.root)
    print(f"wrote Minari dataset {args.minari_id} at {path}")
    return 0
