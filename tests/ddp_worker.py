"""One rank of tests/test_ddp.py, started by ``python -m torch.distributed.run``: trains CONFIG and records, in
OUT/rank<r>.json and OUT/rank<r>.pt, what the test checks (the patients and loss of each step, the files this rank
saved, its gradients after the first step and its final weights).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py CONFIG OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from training.train import TrainConfig, train


def main(config: str, out: str) -> None:
    rank = int(os.environ["RANK"])
    saved: list[str] = []
    real_save = torch.save

    def spy(obj, f, *args, **kwargs):
        if isinstance(f, str | os.PathLike):  # files; all_gather_object pickles through torch.save into buffers
            saved.append(str(f))
        return real_save(obj, f, *args, **kwargs)

    torch.save = spy
    steps: list[dict] = []
    record: dict = {}

    def on_step(info: dict) -> None:
        model = info["model"]
        steps.append({k: info[k] for k in ("step", "rank", "world_size", "cases", "loss")})
        if info["step"] == 1:
            record["grad1"] = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
        record["model"] = model

    messages: list[str] = []
    train(TrainConfig.load(config), log=messages.append, on_step=on_step)
    torch.save = real_save
    state = {k: v.detach().clone() for k, v in record["model"].state_dict().items()}
    torch.save({"grad1": record["grad1"], "state": state}, Path(out) / f"rank{rank}.pt")
    summary = {"rank": rank, "steps": steps, "saved": saved, "messages": messages}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
