"""``python -m training CONFIG``: ``oarmorph train CONFIG`` as a module, for launchers that run one, e.g.

torchrun --nproc_per_node=2 -m training configs/proposed.yaml
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .train import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description="Train a cascade (resumable).")
    parser.add_argument("config", type=Path, help="training configuration (YAML)")
    args = parser.parse_args(argv)
    run = train(TrainConfig.load(args.config))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {run}")


if __name__ == "__main__":
    main()
