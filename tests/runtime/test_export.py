"""``lfm-policy export`` to ONNX: parity with eager PyTorch for every head, refusals, the CLI, batch dims."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from runtime_helpers import tiny_policy

from lfm_policy import Policy
from lfm_policy.checkpoint import WEIGHTS, sha256_file
from lfm_policy.cli import main as cli_main
from lfm_policy.errors import LfmPolicyError
from lfm_policy.flow import SolverConfig
from lfm_policy.flow.distill import DistillConfig
from lfm_policy.heads import DiffusionSampler
from lfm_policy.runtime import export as export_mod
from lfm_policy.runtime.export import export_onnx, input_names, resolve_sampler
from lfm_policy.runtime.export_check import compare_latency, onnx_session
from lfm_policy.runtime.interface import random_inputs

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MIDPOINT = SolverConfig(method="midpoint", steps=1)


def ort_chunk(path, policy, batch: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """onnxruntime's chunk (B, H, Da) on random windows ``{key: (B, To, ...)}`` and noise (B, H, Da), and those."""
    obs, noise = random_inputs(policy, batch, np.random.default_rng(seed))
    names = input_names(list(policy.spec.obs_shapes))
    got = onnx_session(path).run(["chunk"], {**{names[k]: v for k, v in obs.items()}, "noise": noise})[0]
    return got, obs, noise


def eager(policy, obs, noise, solver=None) -> np.ndarray:
    """(B, H, Da) eager chunk."""
    return policy.predict_action_chunk({k: torch.from_numpy(v) for k, v in obs.items()},
                                       noise=torch.from_numpy(noise), solver=solver).numpy()


def distilled_policy() -> Policy:
    """A tiny 2-block lfm whose blocks have 2-step students (teacher weights perturbed, so they differ)."""
    teacher = tiny_policy("lfm")
    head = teacher.config.head
    student = SolverConfig(method="student")
    chain = head.chain.replace(student_steps=(2, 2), sample_solvers=(student, student))
    cfg = teacher.config.replace(head=head.replace(chain=chain, distill=DistillConfig(steps=2)))
    policy = Policy(cfg, teacher.spec, teacher.normalizer)
    missing = policy.load_state_dict(teacher.state_dict(), strict=False).missing_keys
    assert missing and all("students" in k or "student_" in k for k in missing)
    chain = policy.head.chain
    for n in range(2):
        chain.begin_student(n)
        chain.finish_student(n)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in chain.ema_students.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return policy.eval()


@pytest.fixture(scope="module")
def lfm_export(tmp_path_factory):
    """A 2-block lfm (euler:2 per block, the tiny default) exported with a dynamic batch."""
    policy = tiny_policy("lfm")
    path = tmp_path_factory.mktemp("lfm") / "policy.onnx"
    return policy, export_onnx(policy, path, check_samples=4)


# ---------------------------------------------------------------------------------------------- parity
def test_lfm_export_matches_eager_at_any_batch_and_describes_itself(lfm_export):
    policy, report = lfm_export
    assert report.solver_text == "euler:2,euler:2" and report.nfe == 4 and report.batch is None
    assert report.parity_max_abs_diff <= 1e-4 and report.check_samples == 4
    for b in (1, 3):  # dynamic batch: one file serves both
        got, obs, noise = ort_chunk(report.path, policy, b, seed=b)
        assert got.shape == (b, 8, 2) and got.dtype == np.float32
        assert np.abs(got - eager(policy, obs, noise)).max() <= 1e-4
    session = onnx_session(report.path)
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [
        ("agent_pos", ["batch", 2, 2], "tensor(float)"), ("goal_pos", ["batch", 2, 2], "tensor(float)"),
        ("noise", ["batch", 8, 2], "tensor(float)")]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("chunk", ["batch", 8, 2])]
    meta = json.loads(report.json_path.read_text())
    assert meta["path"] == "policy.onnx" and meta["head"] == "lfm" and meta["nfe"] == 4
    assert [i["name"] for i in meta["inputs"]] == ["agent_pos", "goal_pos", "noise"]
    assert meta["inputs"][0] == {"name": "agent_pos", "key": "agent_pos", "kind": "low_dim",
                                 "shape": ["batch", 2, 2], "dtype": "float32"}
    assert meta["output"] == {"name": "chunk", "shape": ["batch", 8, 2], "dtype": "float32"}
    assert (meta["n_obs_steps"], meta["horizon"], meta["n_action_steps"], meta["action_dim"]) == (2, 8, 4, 2)
    assert [s["method"] for s in meta["solver"]] == ["euler", "euler"] and meta["checkpoint_sha256"] is None
    assert meta["parity_max_abs_diff"] == report.parity_max_abs_diff and meta["lfm_policy_version"]
    assert sorted(p.name for p in report.path.parent.iterdir()) == ["policy.onnx", "policy.onnx.json"]


@pytest.mark.parametrize("kind, image, solver, text, nfe", [  # lfm with midpoint: the CLI test
    ("fm", False, None, "euler:2", 2),
    ("regression", False, None, "-", 1),
    ("diffusion", False, DiffusionSampler("ddim", 3), "ddim:3", 3),
    ("lfm", True, None, "euler:2,euler:2", 4),  # camera: uint8 HWC frames → crop → CNN inside the graph
])
def test_every_head_exports_with_parity(tmp_path, kind, image, solver, text, nfe):
    policy = tiny_policy(kind, image=image)
    report = export_onnx(policy, tmp_path / "p.onnx", solver=solver, check_samples=3)
    assert (report.solver_text, report.nfe, report.head) == (text, nfe, kind)
    assert report.parity_max_abs_diff <= 1e-4
    got, obs, noise = ort_chunk(report.path, policy, 2, seed=7)
    ref = eager(policy, obs, noise, solver)
    assert np.abs(got - ref).max() <= 1e-4
    if kind != "regression":  # the noise input is used (regression ignores it)
        other = ort_chunk(report.path, policy, 2, seed=8)[0]
        assert np.abs(other - got).max() > 1e-3
    if image:
        inputs = {i["name"]: i for i in report.inputs}
        assert inputs["cam_image"]["dtype"] == "uint8" and inputs["cam_image"]["shape"] == ["batch", 2, 16, 16, 3]


def test_distilled_students_are_what_the_graph_runs(tmp_path):
    policy = distilled_policy()
    report = export_onnx(policy, tmp_path / "s.onnx", check_samples=2)
    assert report.solver_text == "student,student" and report.nfe == 4
    got, obs, noise = ort_chunk(report.path, policy, 2, seed=3)
    assert np.abs(got - eager(policy, obs, noise)).max() <= 1e-4
    ode = eager(policy, obs, noise, SolverConfig(method="euler", steps=2))  # the teacher's blocks
    assert np.abs(got - ode).max() > 1e-3


# -------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("kind, solver, match", [
    ("lfm", SolverConfig(method="dopri5"), "block 0 is 'dopri5', adaptive"),
    ("lfm", [MIDPOINT, SolverConfig(method="dopri5")], "block 1 is 'dopri5', adaptive"),
    ("fm", SolverConfig(method="student"), "has no distilled student"),
    ("lfm", DiffusionSampler("ddim", 2), "ODE solvers or students"),
    ("diffusion", DiffusionSampler("ddpm"), "DDPM draws fresh noise at every step.*export DDIM"),
    ("diffusion", MIDPOINT, "samples with ddim"),
    ("regression", MIDPOINT, "regression head takes no solver"),
])
def test_unexportable_samplers_are_refused_and_nothing_is_written(tmp_path, kind, solver, match):
    policy = tiny_policy(kind)
    with pytest.raises(LfmPolicyError, match=match) as e:
        export_onnx(policy, tmp_path / "p.onnx", solver=solver)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_a_ddpm_checkpoint_and_bad_arguments_are_refused(tmp_path):
    policy = tiny_policy("diffusion")
    policy.config.head.diffusion.sampler = "ddpm"  # a checkpoint configured to sample with DDPM
    with pytest.raises(LfmPolicyError, match="DDPM"):
        resolve_sampler(policy)
    with pytest.raises(LfmPolicyError, match="batch must be"):
        export_onnx(tiny_policy("fm"), tmp_path / "p.onnx", batch=0)
    with pytest.raises(LfmPolicyError, match="check_samples"):
        export_onnx(tiny_policy("fm"), tmp_path / "p.onnx", check_samples=0)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_fails_parity_is_deleted_and_the_old_one_kept(lfm_export, tmp_path, monkeypatch):
    _, good = lfm_export
    target = tmp_path / "policy.onnx"
    target.write_bytes(b"previous export")
    wrong = tiny_policy("lfm", seed=5)  # same inputs, other weights: the lfm file is wrong for it
    monkeypatch.setattr(export_mod, "_export_graph", lambda graph, example, names, batch, path:
                        shutil.copy(good.path, path))
    with pytest.raises(LfmPolicyError, match=r"onnxruntime and PyTorch differ by .* nothing written"):
        export_onnx(wrong, target, check_samples=2)
    assert target.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx"]


def test_input_names_are_sanitized_unique_and_never_noise():
    keys = ["agent_pos", "robot0/eef.pos", "robot0_eef_pos", "noise", "0cam", "a-b"]
    assert input_names(keys) == {"agent_pos": "agent_pos", "robot0/eef.pos": "robot0_eef_pos",
                                 "robot0_eef_pos": "robot0_eef_pos_1", "noise": "obs_noise", "0cam": "obs_0cam",
                                 "a-b": "a_b"}


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_exports_a_checkpoint_and_a_second_run_replaces_it(tmp_path, capsys):
    ckpt = tiny_policy("lfm").save(tmp_path / "ckpt")
    assert cli_main(["export", str(ckpt), "--format", "onnx", "--check-samples", "2", "--bench", "3"]) == 0
    out = capsys.readouterr().out
    assert "max |diff|" in out and "onnxruntime" in out and "eager ÷ onnxruntime" in out
    onnx_file, meta_file = ckpt / "policy.onnx", ckpt / "policy.onnx.json"
    meta = json.loads(meta_file.read_text())
    assert meta["checkpoint_sha256"] == sha256_file(ckpt / WEIGHTS) and meta["batch"] is None
    assert meta["solver_text"] == "euler:2,euler:2" and meta["parity_max_abs_diff"] <= 1e-4
    # second run: another solver and a fixed batch replace both files
    assert cli_main(["export", str(ckpt), "--solver", "midpoint:1", "--batch", "2", "--check-samples", "3"]) == 0
    meta = json.loads(meta_file.read_text())
    assert meta["solver_text"] == "midpoint:1,midpoint:1" and meta["nfe"] == 4 and meta["batch"] == 2
    assert [i["shape"][0] for i in meta["inputs"]] == [2, 2, 2]
    session = onnx_session(onnx_file)
    assert all(i.shape[0] == 2 for i in session.get_inputs())
    policy = Policy.load(ckpt)
    got, obs, noise = ort_chunk(onnx_file, policy, 2)
    assert np.abs(got - eager(policy, obs, noise, MIDPOINT)).max() <= 1e-4
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # a fixed batch of 2 takes only 2
        ort_chunk(onnx_file, policy, 1)
    lat = compare_latency(policy, onnx_file, solver=MIDPOINT, calls=2, warmup=1)
    assert lat.batch == 2 and lat.onnx_p50_ms > 0 and lat.eager_p95_ms >= lat.eager_p50_ms
    # a refused run is one line and leaves the files as they were
    before = onnx_file.read_bytes()
    assert cli_main(["export", str(ckpt), "--solver", "dopri5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adaptive" in err and onnx_file.read_bytes() == before
    assert cli_main(["export", str(ckpt), "--solver", "ddim:4"]) == 1
    assert "do not apply" in capsys.readouterr().err
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "policy.json", "policy.onnx",
                                                      "policy.onnx.json"]
