"""Checkpoints without pickle: ``model.safetensors`` (weights and normalizer) + ``policy.json``.

``policy.json`` holds the format version, the :class:`PolicyConfig`, the :class:`PolicySpec` and free
metadata (training step, stage). Both files are written to a temporary directory that is renamed into
place, so an interrupted save never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lfm_policy.errors import CheckpointError
from lfm_policy.policy import Policy, PolicyConfig, PolicySpec

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "policy.json"


def save_policy(policy: Policy, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None,
                write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``path/`` (a directory) atomically; an existing checkpoint there is replaced.

    Args:
        policy: The policy to save.
        path: Checkpoint directory.
        metadata: Free JSON metadata stored in ``policy.json``.
        write_extra: Called with the staging directory to add more files (e.g. the trainer's resume
            state) before the directory is published, so they appear atomically with the weights.

    """
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))
    meta = {"format_version": FORMAT_VERSION, "config": policy.config.to_dict(), "spec": policy.spec.to_dict(),
            "metadata": metadata or {}}
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if write_extra is not None:
        write_extra(tmp)
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON part of a checkpoint (validated format version)."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {META})")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file}: corrupt JSON ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_file}: format_version {meta.get('format_version')!r} is not supported "
                              f"(this lfm-policy reads {FORMAT_VERSION})")
    return meta


def load_policy(path: str | os.PathLike, *, map_location: str = "cpu",
                expect_obs_shapes: dict[str, tuple[int, ...]] | None = None) -> Policy:
    """Load a checkpoint written by :func:`save_policy` (no pickle involved).

    Args:
        path: Checkpoint directory.
        map_location: Device for the weights.
        expect_obs_shapes: If given, the observation spec the caller will feed; a mismatch with the
            checkpoint's spec is a :class:`CheckpointError` naming the key.

    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_checkpoint_meta(path)
    config = PolicyConfig.from_dict(meta["config"], where=str(path / META))
    spec = PolicySpec.from_dict(meta["spec"], where=str(path / META))
    if expect_obs_shapes is not None:
        check_spec(spec, expect_obs_shapes, path)
    policy = Policy(config, spec)
    try:
        state = load_file(str(path / WEIGHTS), device=map_location)
    except (SafetensorError, FileNotFoundError, OSError) as e:
        raise CheckpointError(f"{path / WEIGHTS}: cannot read weights ({e})") from None
    try:
        policy.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path / WEIGHTS}: weights do not match {META} ({str(e).splitlines()[0]})") from None
    return policy.to(map_location).eval()


def check_spec(spec: PolicySpec, obs_shapes: dict[str, tuple[int, ...]], where: Path | str) -> None:
    """Raise :class:`CheckpointError` if observation keys or shapes differ from the checkpoint's."""
    got = {k: tuple(int(s) for s in v) for k, v in obs_shapes.items()}
    for key, shape in spec.obs_shapes.items():
        if key not in got:
            raise CheckpointError(f"{where}: the policy needs observation {key!r} {shape}, which is missing; "
                                  f"got {sorted(got)}")
        if got[key] != shape:
            raise CheckpointError(f"{where}: observation {key!r} has shape {got[key]}, the policy was trained "
                                  f"on {shape}")
