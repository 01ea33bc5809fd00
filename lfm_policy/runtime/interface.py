"""What the runtime needs from a policy: :class:`PolicyInfo` and the :class:`ChunkPredictor` protocol.

The control loop, the policy server and the benchmark talk to a policy through one narrow interface,
so that :class:`~lfm_policy.runtime.loop.ControlLoop` runs unchanged on a local checkpoint
(:class:`LocalPredictor`) or over the network (:class:`~lfm_policy.runtime.client.PolicyClient`):

* ``info`` — a :class:`PolicyInfo` (shapes, action limits, NFE; JSON round trip for the server's
  metadata message);
* ``reset(seed=None)`` — start an episode (the sampling noise of episode ``seed`` is then the same
  as ``lfm-policy eval`` draws for that seed);
* ``predict(window, prefix=None, prefix_weights=None) -> (H, Da)`` — one action chunk, unnormalized,
  for one observation window ``{key: (To, ...)}``; with ``prefix`` (P, Da) and weights (P,), a flow
  head generates a chunk whose steps To−1 … To−2+P follow the prefix (real-time-chunking style
  inpainting, :mod:`lfm_policy.runtime.inpaint`);
* ``last_timing`` — ``{"encode_ms", "sample_ms"}`` of the last call (where known).

Observation windows are checked by :func:`validate_window`: every key of the spec, nothing else, shape
(To, *frame shape), images uint8, low-dim keys real numbers and finite.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lfm_policy.errors import LfmPolicyError

#: Action limits are the training actions' [min, max] widened by this fraction of the range per side.
DEFAULT_LIMIT_MARGIN = 0.05


class ObservationError(LfmPolicyError, ValueError):
    """An observation window does not match the policy's spec (the message names the key)."""


@dataclasses.dataclass
class PolicyInfo:
    """Shapes and facts of a policy that a runtime needs (JSON-able).

    Attributes:
        n_obs_steps: To, frames per observation window.
        horizon: H, actions per predicted chunk.
        n_action_steps: Ta, actions executed per chunk.
        action_dim: Da.
        obs_shapes: ``{key: per-frame shape}`` (images (H, W, C)).
        image_keys: Keys that are uint8 camera images.
        action_low: (Da,) lowest action seen in training (unnormalized).
        action_high: (Da,) highest action seen in training.
        head: Head kind (``lfm``, ``fm``, ``diffusion``, ``regression``).
        nfe: Network evaluations per chunk with the predictor's solver (None: data dependent).
        inpainting: Whether ``predict`` honours ``prefix`` (flow heads).
        extra: Free facts (checkpoint path, version, solver).

    """

    n_obs_steps: int
    horizon: int
    n_action_steps: int
    action_dim: int
    obs_shapes: dict[str, tuple[int, ...]]
    image_keys: tuple[str, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    head: str
    nfe: int | None
    inpainting: bool
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def chunk_start(self) -> int:
        """Index of the chunk step aligned with the newest observation (To − 1)."""
        return self.n_obs_steps - 1

    def limits(self, margin: float = DEFAULT_LIMIT_MARGIN) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) (Da,) safety limits: the training range widened by ``margin`` × range per side."""
        lo, hi = np.asarray(self.action_low, np.float64), np.asarray(self.action_high, np.float64)
        pad = margin * (hi - lo)
        return (lo - pad).astype(np.float32), (hi + pad).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["obs_shapes"] = {k: list(v) for k, v in self.obs_shapes.items()}
        d["image_keys"], d["action_low"], d["action_high"] = (list(d[k]) for k in ("image_keys", "action_low",
                                                                                   "action_high"))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyInfo:
        """Inverse of :meth:`to_dict` (raises :class:`LfmPolicyError` naming a missing field)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n != "extra" and n not in d]
        if missing:
            raise LfmPolicyError(f"policy info lacks field(s) {missing}")
        kw = {n: d[n] for n in names if n in d}
        kw["obs_shapes"] = {str(k): tuple(int(s) for s in v) for k, v in kw["obs_shapes"].items()}
        kw["image_keys"] = tuple(kw["image_keys"])
        kw["action_low"], kw["action_high"] = tuple(map(float, kw["action_low"])), tuple(map(float, kw["action_high"]))
        return cls(**kw)


def policy_info(policy, solver=None, **extra: Any) -> PolicyInfo:
    """The :class:`PolicyInfo` of a :class:`lfm_policy.Policy` (limits from its action normalizer)."""
    cfg, spec = policy.config, policy.spec
    ones = torch.ones(spec.action_dim, device=policy.device)
    lo = policy.normalizer.unnormalize_key("action", -ones).cpu().numpy()
    hi = policy.normalizer.unnormalize_key("action", ones).cpu().numpy()
    return PolicyInfo(n_obs_steps=cfg.n_obs_steps, horizon=cfg.horizon, n_action_steps=cfg.n_action_steps,
                      action_dim=spec.action_dim, obs_shapes=dict(spec.obs_shapes), image_keys=spec.image_keys,
                      action_low=tuple(map(float, np.minimum(lo, hi))),
                      action_high=tuple(map(float, np.maximum(lo, hi))), head=cfg.head.kind,
                      nfe=policy.nfe(solver), inpainting=cfg.head.kind in ("lfm", "fm"), extra=extra)


def validate_window(info: PolicyInfo, window: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check an observation window ``{key: (To, ...)}`` against ``info``; returns numpy arrays.

    Raises:
        ObservationError: Missing or unknown key, wrong shape, wrong dtype (images must be uint8,
            low-dim keys real numbers), or a non-finite low-dim value — naming the key.

    """
    if not isinstance(window, Mapping):
        raise ObservationError(f"observation must be a mapping of key to array, got {type(window).__name__}")
    missing = [k for k in info.obs_shapes if k not in window]
    unknown = sorted(str(k) for k in window if k not in info.obs_shapes)
    if missing or unknown:
        raise ObservationError(f"observation: missing key(s) {missing}, unknown key(s) {unknown}; "
                               f"the policy expects {sorted(info.obs_shapes)}")
    out = {}
    for key, shape in info.obs_shapes.items():
        x = window[key]
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except (ValueError, TypeError) as e:
                raise ObservationError(f"observation {key!r}: not an array ({e})") from None
        want = (info.n_obs_steps, *shape)
        if tuple(x.shape) != want:
            raise ObservationError(f"observation {key!r}: expected shape {want}, got {tuple(x.shape)}")
        if key in info.image_keys:
            if x.dtype != np.uint8:
                raise ObservationError(f"observation {key!r}: images must be uint8, got {x.dtype}")
        else:
            if x.dtype.kind not in "fiu" or x.dtype.itemsize > 8:
                raise ObservationError(f"observation {key!r}: expected real numbers, got dtype {x.dtype}")
            if not np.isfinite(x).all():
                raise ObservationError(f"observation {key!r}: contains NaN or inf")
        out[key] = x
    return out


def random_inputs(policy, batch: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random observation windows ``{key: (B, To, ...)}`` and noise (B, H, Da), as a robot would send them.

    Images are uniform uint8; low-dim keys uniform over the training range (the normalized [−1, 1]
    mapped back through the normalizer), float32.
    """
    cfg, spec = policy.config, policy.spec
    obs = {}
    for key, shape in spec.obs_shapes.items():
        size = (batch, cfg.n_obs_steps, *shape)
        if key in spec.image_keys:
            obs[key] = rng.integers(0, 256, size, dtype=np.uint8)
        else:
            u = torch.from_numpy(rng.uniform(-1.0, 1.0, size).astype(np.float32))
            obs[key] = policy.normalizer.unnormalize_key(key, u.to(policy.device)).cpu().numpy().astype(np.float32)
    noise = rng.standard_normal((batch, cfg.horizon, spec.action_dim)).astype(np.float32)
    return obs, noise


def latency_stats(values) -> dict[str, float | None]:
    """``{"p50", "p95", "max", "mean"}`` of a list of timings (all None when it is empty)."""
    if not len(values):
        return {"p50": None, "p95": None, "max": None, "mean": None}
    v = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "max": float(v.max()),
            "mean": float(v.mean())}


@runtime_checkable
class ChunkPredictor(Protocol):
    """A policy as the runtime sees it (see the module docstring)."""

    info: PolicyInfo
    last_timing: dict[str, float]

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; ``seed`` fixes the sampling noise of its chunks."""

    def predict(self, window: Mapping[str, Any], *, prefix: np.ndarray | None = None,
                prefix_weights: np.ndarray | None = None) -> np.ndarray:
        """(H, Da) float32 unnormalized chunk for one window ``{key: (To, ...)}``."""


class LocalPredictor:
    """A :class:`lfm_policy.Policy` in this process behind the :class:`ChunkPredictor` interface.

    Args:
        policy: The policy (put in eval mode).
        solver: Sampling solver(s) (None: the checkpoint's own).
        guidance: Step size of the prefix guidance when ``predict`` gets a prefix (flow heads).
        info: The policy's :class:`PolicyInfo` when already known (a server making one predictor per
            connection computes it once); None computes it.
        extra: Facts added to ``info.extra``.

    Noise: after ``reset(seed)`` chunk k draws its noise (1, H, Da) from a generator seeded with
    ``seed`` (as ``lfm-policy eval`` does for the episode of that seed); without a seed, from the
    global RNG.

    """

    def __init__(self, policy, *, solver=None, guidance: float = 1.0, info: PolicyInfo | None = None,
                 **extra: Any):
        self.policy = policy.eval()
        self.solver = solver
        self.guidance = float(guidance)
        self.info = info if info is not None else policy_info(policy, solver, **extra)
        self.last_timing: dict[str, float] = {}
        self._generator: torch.Generator | None = None

    def reset(self, seed: int | None = None) -> None:
        """Start an episode (``seed``: the noise of its chunks, as eval draws it)."""
        self._generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

    @torch.no_grad()
    def predict(self, window: Mapping[str, Any], *, prefix: np.ndarray | None = None,
                prefix_weights: np.ndarray | None = None) -> np.ndarray:
        """(H, Da) chunk; ``prefix`` (P, Da) with ``prefix_weights`` (P,) steers a flow head's chunk."""
        info = self.info
        window = validate_window(info, window)
        noise = torch.randn(1, info.horizon, info.action_dim, generator=self._generator)
        t0 = time.perf_counter()
        obs = {k: torch.as_tensor(v)[None] for k, v in window.items()}  # (1, To, ...)
        cond = self.policy.encode(obs)
        t1 = time.perf_counter()
        noise = noise.to(cond.device)
        if prefix is not None and info.inpainting:
            from lfm_policy.runtime.inpaint import guided_chunk

            chunk = guided_chunk(self.policy, cond, noise, prefix, prefix_weights, solver=self.solver,
                                 guidance=self.guidance)
        else:
            chunk = self.policy.sample_chunk(cond, noise=noise, solver=self.solver)
        chunk = chunk[0].float().cpu().numpy()  # (H, Da)
        self.last_timing = {"encode_ms": 1e3 * (t1 - t0), "sample_ms": 1e3 * (time.perf_counter() - t1)}
        return chunk


def parse_solver(policy: Any, text: str | None) -> Any:
    """The solver of ``--solver TEXT`` for ``policy`` (None: the checkpoint's own), as ``lfm-policy eval``.

    Used by ``serve``, ``bench`` and ``control``.

    Accepts what ``eval --solver`` does, plus ``ddim:STEPS`` for a diffusion head (eval gives those steps
    with ``--nfe``).

    Raises:
        LfmPolicyError: The solver does not apply to the head or does not parse.

    """
    from lfm_policy.config import ConfigError
    from lfm_policy.errors import LfmPolicyError
    from lfm_policy.eval.cli import _solver_runs

    if text is None:
        return None
    text, nfe = text.strip(), None
    m = re.fullmatch(r"(ddim|ddpm):(\d+)", text)
    if m and policy.config.head.kind != "diffusion":
        text = m[1]  # eval's message: ddim/ddpm do not apply to this head
    elif m:
        if m[1] == "ddpm":
            raise LfmPolicyError("--solver ddpm: DDPM samples with all num_train_timesteps steps; use ddim:STEPS")
        text, nfe = "ddim", [int(m[2])]
    try:
        return _solver_runs(policy, nfe, text)[0][1]
    except (ConfigError, ValueError) as e:
        raise LfmPolicyError(f"--solver {text}: {e}") from None
