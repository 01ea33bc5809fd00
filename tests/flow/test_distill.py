"""Per-block distillation: exact recovery of an affine block, row alignment, NFE, mixing students and ODEs."""

import pytest
import torch
from exact_fields import ConstantDrift
from torch import nn

from lfm_policy.flow import ChainConfig, LocalFlowChain, SolverConfig
from lfm_policy.flow.distill import (
    DistillConfig,
    PairReplay,
    choose_teacher_steps,
    distill_loss,
    student_path_pair,
    teacher_path_pair,
)

STUDENT = SolverConfig(method="student")


class LinearField(nn.Module):
    """v(x, t, c) = x Mᵀ + c Wᵀ + b on flat (B, D) states (t is ignored): learnable, affine in x and c."""

    def __init__(self, d: int, dc: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(d, d))
        self.w = nn.Parameter(torch.zeros(d, dc))
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, x, t, cond):
        return x @ self.m.T + cond @ self.w.T + self.b


def finished(chain):
    for n in range(chain.n_blocks):
        chain.begin_block(n)
        chain.finish_block(n)
    return chain


def test_one_step_student_recovers_an_affine_block_exactly():
    """dx/dt = A x + W c + b reversed over t: 1→0 is affine; a one-step student of that form must match it."""
    torch.manual_seed(0)
    d, dc = 3, 2
    chain = LocalFlowChain(lambda n: LinearField(d, dc), (d,), ChainConfig(n_blocks=1, student_steps=(1,)))
    a, w, b = 0.6 * torch.randn(d, d), torch.randn(d, dc), torch.randn(d)
    with torch.no_grad():
        chain.blocks[0].net.m.copy_(a)
        chain.blocks[0].net.w.copy_(w)
        chain.blocks[0].net.b.copy_(b)
    chain.ema_blocks[0].load_state_dict(chain.blocks[0].state_dict())
    finished(chain)
    chain.begin_student(0)  # the student starts as the teacher evaluated once (Euler)
    cfg = DistillConfig(teacher_solver=SolverConfig(method="rk4", steps=32), reuse=1)
    opt = torch.optim.Adam(chain.students.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(600):
        x, c = torch.randn(256, d, generator=g), torch.randn(256, dc, generator=g)
        loss = distill_loss(chain, 0, x, c, cfg, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        chain.update_student_ema(0)
        losses.append(loss.item())
    # closed form: x(0) = e^{-A} x(1) − (I − e^{-A}) A^{-1} (W c + b)
    x1, c = torch.randn(64, d), torch.randn(64, dc)
    e = torch.linalg.matrix_exp(-a)
    exact = x1 @ e.T - ((c @ w.T + b) @ torch.linalg.inv(a).T) @ (torch.eye(d) - e).T
    student = chain.students["0"].reverse_transport(x1, c, SolverConfig(method="euler", steps=1))
    assert losses[-1] < 1e-3 * losses[0]
    torch.testing.assert_close(student, exact, atol=2e-3, rtol=2e-3)


def drift_chain(n_blocks=3, students=(1, 1, 1)):
    """Blocks with v = c (exact under Euler): each reverse map subtracts the row's own condition."""
    chain = LocalFlowChain(lambda n: ConstantDrift(), (2,), ChainConfig(n_blocks=n_blocks, student_steps=students))
    finished(chain)
    for n in range(n_blocks):
        if students[n]:
            chain.begin_student(n)
            chain.finish_student(n)
    return chain


def test_pairs_keep_each_row_with_its_own_condition():
    chain = drift_chain()
    x = torch.randn(8, 2)
    cond = torch.arange(16.0).reshape(8, 2)
    euler = SolverConfig(method="euler", steps=1)
    x_in, target = teacher_path_pair(chain, 1, x, cond, euler)
    torch.testing.assert_close(x_in, x + 2 * cond)  # pushed through blocks 0 and 1, each adding cond
    torch.testing.assert_close(target, x + cond)  # block 1's reverse from there
    g = torch.Generator().manual_seed(3)
    x_in, target = student_path_pair(chain, 0, cond, euler, generator=g)
    z = torch.randn((8, 2), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x_in, z - 2 * cond)  # students of blocks 2 and 1 from the same noise
    torch.testing.assert_close(target, z - 3 * cond)


def test_a_planted_shuffle_of_the_conditions_is_caught(monkeypatch):
    """The check above must fail if any map saw another row's condition."""
    perm = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])
    real = LocalFlowChain.reverse_block

    def shuffled(self, n, x, cond, solver, **kw):
        return real(self, n, x, cond[perm], solver, **kw)

    monkeypatch.setattr(LocalFlowChain, "reverse_block", shuffled)
    with pytest.raises(AssertionError):
        test_pairs_keep_each_row_with_its_own_condition()


def test_the_student_network_receives_each_rows_condition():
    """Through the replay too: a row's input, target and condition are stored and drawn together."""
    seen = []

    class Recording(ConstantDrift):
        def forward(self, x, t, cond):
            seen.append((x.detach().clone(), cond.detach().clone()))
            return super().forward(x, t, cond)

    chain = LocalFlowChain(lambda n: Recording(), (2,), ChainConfig(n_blocks=1, student_steps=(1,)))
    finished(chain)
    chain.begin_student(0)
    x = torch.zeros(16, 2)
    cond = torch.arange(32.0).reshape(16, 2)
    cfg = DistillConfig(teacher_solver=SolverConfig(method="euler", steps=1), reuse=4, replay_size=64,
                        inputs="teacher_path")
    replay = PairReplay(64)
    for _ in range(3):
        seen.clear()
        loss = distill_loss(chain, 0, x, cond, cfg, replay=replay, generator=torch.Generator().manual_seed(0))
        x_student, c_student = seen[-1]  # the student's call; input = data pushed = x + cond
        torch.testing.assert_close(x_student, c_student)  # each input came from its own condition
        assert loss.item() == pytest.approx(0.0, abs=1e-10)  # ConstantDrift's student is exact
    assert len(replay) == 16 + 2 * 4  # one full batch, then a quarter of a batch per step


def test_nfe_determinism_and_mixing_students_with_odes():
    chain = drift_chain(3, (2, 0, 1))
    assert chain.nfe([STUDENT, SolverConfig(method="midpoint", steps=3), STUDENT]) == 2 + 6 + 1
    with pytest.raises(ValueError, match="block 1 has no distilled student"):
        chain.nfe(STUDENT)
    noise = torch.randn(5, 2)
    cond = torch.randn(5, 2)
    mixed = [STUDENT, SolverConfig(method="euler", steps=1), STUDENT]
    a = chain.sample(cond, noise=noise, solver=mixed)
    b = chain.sample(cond, noise=noise, solver=mixed)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, noise - 3 * cond)  # every map subtracts cond exactly
    with pytest.raises(Exception, match="sample_solvers"):
        ChainConfig(n_blocks=2, student_steps=(1, 0), sample_solvers=(STUDENT, STUDENT))


def test_teacher_steps_double_until_the_reverse_map_converges():
    torch.manual_seed(0)

    class Curved(nn.Module):
        def forward(self, x, t, cond):
            return torch.sin(3 * x) * (1 + 4 * t[:, None])

    chain = finished(LocalFlowChain(lambda n: Curved(), (4,), ChainConfig(n_blocks=2)))
    x = torch.randn(64, 4)
    loose = choose_teacher_steps(chain, x, None, tolerance=0.05)
    tight = choose_teacher_steps(chain, x, None, tolerance=1e-4)
    assert all(t > lo for t, lo in zip(tight, loose)) and all(s >= 8 for s in loose)
