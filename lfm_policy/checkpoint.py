"""Checkpoints without pickle: ``model.safetensors`` (weights and normalizer) + ``policy.json``.

``policy.json`` holds the format version, the :class:`PolicyConfig`, the :class:`PolicySpec` and free
metadata (training step, stage). Both files are written to a temporary directory that is renamed into
place, so an interrupted save never leaves a half checkpoint.
"""

from __future__ import annotations

import hashlib
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


def _upgrade_config(config: dict) -> dict:
    """A saved policy config in today's form: fields added since keep the behaviour it was trained with.

    ``encoder.feature_norm`` (camera-feature standardization) is on by default today; checkpoints
    saved before it existed have none.
    """
    encoder = config.get("encoder")
    if isinstance(encoder, dict) and "feature_norm" not in encoder:
        config = {**config, "encoder": {**encoder, "feature_norm": False}}
    return config


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
    config = PolicyConfig.from_dict(_upgrade_config(meta["config"]), where=str(path / META))
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


def sha256_file(path: str | Path) -> str | None:
    """Hex sha256 of a file (None when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Weights a policy may have that its ``init_from`` checkpoint lacks: distilled students (new modules).
NEW_MODULE_PREFIXES = ("head.chain.students.", "head.chain.ema_students.", "head.chain.student_")


def _checked_spec(policy: Policy, checkpoint: str | os.PathLike) -> PolicySpec:
    """``checkpoint``'s spec, after checking that it reads the observations ``policy`` is given."""
    spec = PolicySpec.from_dict(read_checkpoint_meta(checkpoint)["spec"], where=str(checkpoint))
    check_spec(spec, dict(policy.spec.obs_shapes), checkpoint)
    return spec


def _weights(checkpoint: str | os.PathLike, map_location: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(checkpoint) / WEIGHTS), device=map_location)


def init_weights(policy: Policy, checkpoint: str | os.PathLike, *, map_location: str = "cpu") -> None:
    """Load ``checkpoint``'s weights and normalizer into ``policy`` (same spec; only new modules may be absent).

    Raises:
        CheckpointError: Other observations or action size, weights of another architecture, or (when
            the policy distills this checkpoint) weights that changed since the distillation was set up.

    """
    spec = _checked_spec(policy, checkpoint)
    if spec.action_dim != policy.spec.action_dim:
        raise CheckpointError(f"{checkpoint}: action_dim {spec.action_dim}, the data has {policy.spec.action_dim}")
    distill = policy.config.head.distill
    if distill is not None and distill.teacher_sha256:
        got = sha256_file(Path(checkpoint) / WEIGHTS)
        if got != distill.teacher_sha256:
            raise CheckpointError(f"{checkpoint}: weights changed since the distillation was set up (sha256 "
                                  f"{(got or 'missing')[:12]}, expected {distill.teacher_sha256[:12]})")
    state = _weights(checkpoint, map_location)
    result = policy.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(NEW_MODULE_PREFIXES)]
    if missing or result.unexpected_keys:
        what, bad = ("missing", missing[0]) if missing else ("unexpected", result.unexpected_keys[0])
        raise CheckpointError(f"{checkpoint}: its weights do not fit this policy ({what} {bad!r}); init_from "
                              "needs a checkpoint of the same architecture")


def init_encoder(policy: Policy, checkpoint: str | os.PathLike, *, map_location: str = "cpu") -> None:
    """Load ``checkpoint``'s EMA observation encoder into ``policy.encoder`` and its EMA copy.

    Raises:
        CheckpointError: Other observations, no trainable encoder, or an encoder of another architecture.

    """
    spec = _checked_spec(policy, checkpoint)
    if set(spec.obs_shapes) != set(policy.spec.obs_shapes):
        raise CheckpointError(f"{checkpoint}: its encoder reads {sorted(spec.obs_shapes)}, this policy "
                              f"{sorted(policy.spec.obs_shapes)}")
    state = _weights(checkpoint, map_location)
    prefix = "ema_encoder." if any(k.startswith("ema_encoder.") for k in state) else "encoder."
    enc_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not enc_state or policy.ema_encoder is None:
        raise CheckpointError(f"{checkpoint}: no trainable observation encoder to start from (low-dim keys "
                              "concatenated as they are have no weights)")
    try:
        policy.encoder.load_state_dict(enc_state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{checkpoint}: its encoder does not fit this policy's encoder config "
                              f"({first})") from None
    policy.ema_encoder.load_state_dict(enc_state)


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
