"""Pickle-free training state for ``--resume``: optimizer, LR schedule, RNG and progress counters.

Tensors (optimizer moments, RNG state) go to ``train_state.safetensors``; everything else (param group
settings, scheduler counters, step/stage) to ``train_state.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lfm_policy.errors import CheckpointError

TENSORS = "train_state.safetensors"
META = "train_state.json"


def save_train_state(path: Path, *, optimizer: torch.optim.Optimizer, scheduler: Any, progress: dict) -> None:
    """Write the two files into ``path`` (a checkpoint directory being assembled)."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(path / TENSORS))
    meta = {"param_groups": opt["param_groups"], "opt_scalars": scalars,
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
            "progress": progress}
    (path / META).write_text(json.dumps(meta, indent=2))


def load_train_state(path: Path, *, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> dict:
    """Restore optimizer/scheduler/RNG from ``path`` (if given) and return the progress dict."""
    from safetensors.torch import load_file

    if not (path / META).is_file() or not (path / TENSORS).is_file():
        raise CheckpointError(f"{path}: no training state to resume from ({META}, {TENSORS})")
    meta = json.loads((path / META).read_text())
    if optimizer is not None:
        tensors = load_file(str(path / TENSORS))
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for idx, values in meta["opt_scalars"].items():
            state.setdefault(int(idx), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    if scheduler is not None:
        scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    return meta["progress"]
