"""Export a policy's whole inference to ONE ONNX graph, checked against PyTorch before it is published.

The graph is what :meth:`lfm_policy.Policy.predict_action_chunk` computes with a fixed sampler:

* inputs: every observation key of the spec, in spec order, as the robot sends it — images uint8
  (B, To, H, W, C), low-dim keys float32 (B, To, D) in raw units — then ``noise`` float32 (B, H, Da);
* inside: image → float CHW in [0, 1], low-dim min-max (or mean-std) normalization, the EMA encoder
  (as inference uses), the head's sampler unrolled with a fixed step count (flow blocks in reverse with
  fixed-step solvers or their distilled students, DDIM with its fixed timesteps, or the one regression
  pass), ``head.clip_sample``, unnormalization;
* output: ``chunk`` float32 (B, H, Da), unnormalized actions (execute ``chunk[:, To−1 : To−1+Ta]``).

Input names are the observation keys where they are plain identifiers; other characters become ``_``
(``robot0/eef.pos`` → ``robot0_eef_pos``), and the mapping is recorded in ``FILE.json``. The batch dim is
dynamic by default (one file serves batch 1 and batched evaluation); ``batch=B`` fixes it instead for
runtimes that want static shapes.

:func:`export_onnx` writes ``FILE.tmp``, runs it with onnxruntime (CPUExecutionProvider) on random
observation windows against eager PyTorch, and only if the largest difference is within tolerance
renames it to ``FILE`` and writes ``FILE.json``; otherwise it deletes the tmp file and raises.
Refused (one-line :class:`LfmPolicyError`, nothing written): adaptive ODE solvers (dopri5: the step
count depends on the data), DDPM (it draws fresh noise at every step; export DDIM), untrained heads.

onnx, onnxscript and onnxruntime are imported inside the functions (``pip install 'lfm-policy[runtime]'``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lfm_policy.errors import LfmPolicyError
from lfm_policy.flow.solvers import STUDENT, SolverConfig
from lfm_policy.heads.config import DiffusionSampler

NOISE = "noise"
OUTPUT = "chunk"
#: Parity tolerance: max |onnx − eager| ≤ TOLERANCE × (1 + max |chunk|).
TOLERANCE = 1e-4


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well it matched PyTorch (also the content of ``FILE.json``).

    Attributes:
        path: The ONNX file.
        json_path: The sidecar description ``FILE.json``.
        inputs: One dict per graph input (``name``, ``key``, ``kind``, ``shape``, ``dtype``), noise last.
        output: ``{"name": "chunk", "shape", "dtype"}``.
        batch: Fixed batch size, or None for a dynamic batch dim.
        head: Head kind.
        solver: The sampler baked into the graph (per-block solver dicts, a DDIM dict, or None).
        solver_text: The same in CLI syntax (``euler:2,euler:2``, ``ddim:10``, ``-``).
        nfe: Network evaluations of the head per chunk.
        parity_max_abs_diff: Largest |onnxruntime − PyTorch| over the checked chunks.
        parity_tolerance: The bound it had to meet.
        check_samples: Observation windows checked.
        facts: Shapes, versions, checkpoint hash, timings (the rest of ``FILE.json``).

    """

    path: Path
    json_path: Path
    inputs: list[dict[str, Any]]
    output: dict[str, Any]
    batch: int | None
    head: str
    solver: Any
    solver_text: str
    nfe: int
    parity_max_abs_diff: float
    parity_tolerance: float
    check_samples: int
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the content of ``FILE.json``)."""
        d = dataclasses.asdict(self)
        d["path"], d["json_path"] = self.path.name, self.json_path.name
        facts = d.pop("facts")
        return {**d, **facts}


# ------------------------------------------------------------------------------------ what is exported
def input_names(keys: list[str]) -> dict[str, str]:
    """ONNX input name of each observation key: non-identifier characters → ``_``, unique, never ``noise``."""
    names: dict[str, str] = {}
    for key in keys:
        base = re.sub(r"\W", "_", key, flags=re.ASCII) or "obs"
        base = f"obs_{base}" if base[0].isdigit() or base == NOISE else base
        name, i = base, 1
        while name in names.values():
            name, i = f"{base}_{i}", i + 1
        names[key] = name
    return names


def resolve_sampler(policy, solver=None) -> tuple[Any, int]:
    """The fixed sampler a graph bakes in, and its NFE; refuses what cannot be exported.

    Args:
        policy: The policy.
        solver: A :class:`SolverConfig` or one per block (flow heads), a :class:`DiffusionSampler`
            (diffusion), None (the checkpoint's own).

    Returns:
        (per-block solver list | DiffusionSampler | None for regression, NFE).

    Raises:
        LfmPolicyError: Adaptive solver, DDPM, a solver of the wrong kind, an untrained head.

    """
    kind, head = policy.config.head.kind, policy.head
    if kind in ("lfm", "fm"):
        given = solver if isinstance(solver, (list, tuple)) else [solver] if solver is not None else []
        if any(not isinstance(s, SolverConfig) for s in given):
            raise LfmPolicyError(f"export: a {kind} head samples with ODE solvers or students, got {solver!r}")
        if not head.ready:
            raise LfmPolicyError(f"export: the {kind} head is not trained (every block must be)")
        try:
            solvers = head.block_solvers(solver)
        except ValueError as e:
            raise LfmPolicyError(f"export: solver: {e}") from None
        for n, s in enumerate(solvers):
            if s.adaptive:
                raise LfmPolicyError(f"export: solver of block {n} is {s.method!r}, adaptive (its step count "
                                     "depends on the data); export a fixed-step solver, e.g. --solver midpoint:4")
        return list(solvers), int(head.chain.nfe(solvers))
    if kind == "diffusion":
        if solver is not None and not isinstance(solver, DiffusionSampler):
            raise LfmPolicyError(f"export: a diffusion head samples with ddim (DiffusionSampler), got {solver!r}")
        try:
            name, steps = head._sampler(solver)
        except ValueError as e:
            raise LfmPolicyError(f"export: solver: {e}") from None
        if name == "ddpm":
            raise LfmPolicyError("export: DDPM draws fresh noise at every step, which a graph with one noise "
                                 "input cannot reproduce; export DDIM instead (--solver ddim:10)")
        return DiffusionSampler("ddim", steps), steps
    if kind == "regression":
        if solver is not None:
            raise LfmPolicyError(f"export: a regression head takes no solver, got {solver!r}")
        return None, 1
    raise LfmPolicyError(f"export: head {kind!r} is not supported (lfm, fm, diffusion, regression)")


def solver_text(sampler: Any) -> str:
    """A resolved sampler in CLI syntax: ``midpoint:1,midpoint:1``, ``student,euler:2``, ``ddim:10``, ``-``."""
    if sampler is None:
        return "-"
    if isinstance(sampler, DiffusionSampler):
        return f"ddim:{sampler.steps}"
    return ",".join(s.method if s.method == STUDENT else f"{s.method}:{s.steps}" for s in sampler)


class InferenceGraph(nn.Module):
    """A policy's inference as one traceable forward ``(*obs, noise) -> chunk`` (no python-side checks).

    Args:
        policy: The policy (its modules are shared, not copied).
        sampler: As returned by :func:`resolve_sampler`.

    """

    def __init__(self, policy, sampler: Any):
        super().__init__()
        self.policy, self.sampler = policy, sampler
        self.keys = list(policy.spec.obs_shapes)
        self.is_image = [k in policy.spec.image_keys for k in self.keys]
        self.clip = bool(policy.config.head.clip_sample)
        if isinstance(sampler, DiffusionSampler):  # a private scheduler: the head's is reset on every call
            self.scheduler = copy.deepcopy(policy.head.schedulers["ddim"])
            self.scheduler.set_timesteps(sampler.steps)
            self.timesteps = [int(t) for t in self.scheduler.timesteps]
            t_scale = policy.config.head.diffusion.num_train_timesteps
            # network time input as the head computes it: t.float() / num_train_timesteps, (S,) float32
            self.register_buffer("net_times", torch.tensor(self.timesteps).float() / t_scale, persistent=False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Observation tensors in spec order, then noise (B, H, Da) → unnormalized chunk (B, H, Da)."""
        *obs_in, noise = inputs
        policy = self.policy
        obs = {}
        for key, is_image, x in zip(self.keys, self.is_image, obs_in):
            if is_image:
                obs[key] = x.permute(0, 1, 4, 2, 3).float() / 255.0  # (B, To, H, W, C) -> (B, To, C, H, W)
            else:
                kn = policy.normalizer[key]
                obs[key] = x.float() * kn.scale + kn.offset  # (B, To, D)
        encoder = policy.ema_encoder if policy.ema_encoder is not None else policy.encoder
        cond = encoder(obs)  # (B, Dc)
        chunk = self._sample(cond, noise)  # (B, H, Da) normalized
        if self.clip:
            chunk = chunk.clamp(-1.0, 1.0)
        kn = policy.normalizer["action"]
        return (chunk - kn.offset) / kn.scale

    def _sample(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        head = self.policy.head
        if self.sampler is None:  # regression: one pass
            return head._predict(head.ema_net, cond)
        if isinstance(self.sampler, DiffusionSampler):  # DDIM, eta = 0: deterministic given the noise
            x = noise
            for i, t in enumerate(self.timesteps):
                out = head.ema_net(x, self.net_times[i].expand(x.shape[0]), cond)
                x = self.scheduler.step(out, t, x).prev_sample
            return x
        x = noise
        for n in reversed(range(len(self.sampler))):  # blocks N−1..0, each unrolled over its fixed steps
            x = head.chain.reverse_block(n, x, cond, self.sampler[n])
        return x


# ------------------------------------------------------------------------------------------- export
def _export_graph(graph: InferenceGraph, example: tuple[torch.Tensor, ...], names: list[str],
                  batch: int | None, path: Path) -> None:
    """torch.onnx.export (dynamo) of ``graph`` to ``path`` (one file, weights inside)."""
    dims = None
    if batch is None:
        b = torch.export.Dim("batch", min=1, max=1 << 20)
        dims = (tuple({0: b} for _ in example),)  # forward(*inputs): one entry holding every input
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (axis renames, deprecations)
        program = torch.onnx.export(graph, example, input_names=names, output_names=[OUTPUT], dynamo=True,
                                    dynamic_shapes=dims, verbose=False, optimize=True)
        program.save(str(path), external_data=False)


def export_onnx(policy, path: str | os.PathLike, *, solver: Any = None, batch: int | None = None,
                check_samples: int = 8, tolerance: float = TOLERANCE, checkpoint: str | os.PathLike | None = None,
                seed: int = 0) -> ExportReport:
    """Export ``policy``'s inference to the ONNX file ``path`` (+ ``path.json``), parity-checked.

    Args:
        policy: A :class:`lfm_policy.Policy` (exported from a CPU copy if it lives elsewhere; put in eval
            mode while exporting, its mode restored after).
        path: The ONNX file to write; an existing one (and its ``.json``) is replaced only on success.
        solver: Sampler to bake in (see :func:`resolve_sampler`); None: the checkpoint's own.
        batch: Fixed batch size of every input, or None for a dynamic batch dim.
        check_samples: Random observation windows for the parity check (≥ 1).
        tolerance: Parity bound: max |Δ| ≤ tolerance × (1 + max |chunk|).
        checkpoint: Checkpoint directory the policy came from (its ``model.safetensors`` sha256 is recorded).
        seed: Seed of the parity windows.

    Returns:
        The :class:`ExportReport` (also written as ``path.json``).

    Raises:
        LfmPolicyError: Unsupported sampler or head, failed export, or parity beyond tolerance (then
            nothing is written and an existing file stays as it was).

    """
    from lfm_policy.runtime.export_check import check_parity
    from lfm_policy.runtime.interface import random_inputs

    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise LfmPolicyError(f"export: batch must be an int ≥ 1 or None (dynamic), got {batch!r}")
    if check_samples < 1:
        raise LfmPolicyError(f"export: check_samples must be ≥ 1, got {check_samples}")
    sampler, nfe = resolve_sampler(policy, solver)
    path = Path(path)
    json_path = path.with_name(path.name + ".json")
    tmp, json_tmp = path.with_name(path.name + ".tmp"), json_path.with_name(json_path.name + ".tmp")
    if policy.device.type != "cpu":
        policy = copy.deepcopy(policy).cpu()
    was_training = policy.training
    names = input_names(list(policy.spec.obs_shapes))
    graph = InferenceGraph(policy, sampler).eval()  # the policy's modules too
    example_obs, example_noise = random_inputs(policy, batch or 2, np.random.default_rng(seed))
    example = (*(torch.from_numpy(example_obs[k]) for k in policy.spec.obs_shapes), torch.from_numpy(example_noise))
    try:
        t0 = time.perf_counter()
        try:
            _export_graph(graph, example, [*names.values(), NOISE], batch, tmp)
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; report one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise LfmPolicyError(f"export: torch.onnx.export failed ({type(e).__name__}: {first[:300]})") from e
        export_s = time.perf_counter() - t0
        diff, big = check_parity(policy, tmp, sampler, names, batch=batch, samples=check_samples, seed=seed + 1)
        bound = tolerance * (1.0 + big)
        if not diff <= bound:
            raise LfmPolicyError(f"export: onnxruntime and PyTorch differ by {diff:.3g} (tolerance {bound:.3g}) "
                                 f"on {check_samples} random windows; nothing written")
        facts = _facts(policy, tmp, checkpoint, max_abs_chunk=big, export_s=export_s)
        report = ExportReport(path=path, json_path=json_path, inputs=_input_specs(policy, names, batch),
                              output={"name": OUTPUT, "shape": [batch or "batch", policy.config.horizon,
                                                                policy.spec.action_dim], "dtype": "float32"},
                              batch=batch, head=policy.config.head.kind, solver=_solver_json(sampler),
                              solver_text=solver_text(sampler), nfe=nfe, parity_max_abs_diff=diff,
                              parity_tolerance=bound, check_samples=check_samples, facts=facts)
        json_tmp.write_text(json.dumps(report.to_dict(), indent=2))
        os.replace(tmp, path)  # both files are complete before either is published
        os.replace(json_tmp, json_path)
    finally:
        tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)
        policy.train(was_training)
    return report


def _input_specs(policy, names: dict[str, str], batch: int | None) -> list[dict[str, Any]]:
    """Name, observation key, kind, shape and dtype of every graph input (noise last)."""
    cfg, spec = policy.config, policy.spec
    b: Any = batch if batch is not None else "batch"
    inputs = [{"name": names[k], "key": k, "kind": "image" if k in spec.image_keys else "low_dim",
               "shape": [b, cfg.n_obs_steps, *s], "dtype": "uint8" if k in spec.image_keys else "float32"}
              for k, s in spec.obs_shapes.items()]
    return [*inputs, {"name": NOISE, "key": None, "kind": "noise", "shape": [b, cfg.horizon, spec.action_dim],
                      "dtype": "float32"}]


def _solver_json(sampler: Any) -> Any:
    """Per-block solver dicts, a DDIM dict, or None (regression)."""
    if isinstance(sampler, DiffusionSampler):
        return sampler.to_dict()
    return [s.to_dict() for s in sampler] if sampler is not None else None


def _facts(policy, onnx_file: Path, checkpoint: str | os.PathLike | None, *, max_abs_chunk: float,
           export_s: float) -> dict[str, Any]:
    """Shapes, opset, versions and the checkpoint's hash for ``FILE.json``."""
    import onnx
    import onnxruntime

    import lfm_policy
    from lfm_policy.checkpoint import WEIGHTS, sha256_file

    cfg = policy.config
    opset = next((o.version for o in onnx.load(str(onnx_file), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), None)
    return {"format": "onnx", "opset": opset, "n_obs_steps": cfg.n_obs_steps, "horizon": cfg.horizon,
            "n_action_steps": cfg.n_action_steps, "action_dim": policy.spec.action_dim,
            "chunk_start": cfg.n_obs_steps - 1, "clip_sample": bool(cfg.head.clip_sample),
            "encoder": "ema" if policy.ema_encoder is not None else "plain (no weights)",
            "noise": "standard normal N(0, I), as predict_action_chunk draws it",
            "parity_max_abs_chunk": max_abs_chunk, "parity_provider": "CPUExecutionProvider",
            "export_s": round(export_s, 3), "onnx_bytes": onnx_file.stat().st_size,
            "lfm_policy_version": lfm_policy.__version__, "torch_version": torch.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "checkpoint_sha256": sha256_file(Path(checkpoint) / WEIGHTS) if checkpoint is not None else None}
