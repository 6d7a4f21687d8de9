"""bench/authors.py runs a checkout of the authors' code on the CPU: checked with a stand-in
checkout that has their layout and calls `.cuda()` as their code does."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from bench.authors import EPS, authors_defence, cpu_only, run_authors
from models import load_checkpoint
from tests.conftest import TINY_MODEL

STAND_IN = '''
import torch


class PreemptRobustLinf:
    """Their interface: initialize(x, y), update() (prints), get_robust_img()."""

    def __init__(self, model, attack_type, epsilon, delta, lr, **kwargs):
        self.model, self.delta = model, delta
        self.criterion = torch.nn.CrossEntropyLoss().cuda()

    def initialize(self, x, y, rec=False):
        self.x, self.y, self.x_rob = x.cuda(), y.cuda(), x.clone()

    def update(self):
        x = self.x_rob.clone().requires_grad_(True)
        grad, = torch.autograd.grad(self.criterion(self.model(x), self.y), x)
        self.x_rob = (self.x_rob - 0.3 * self.delta * grad.sign()).detach()  # may leave the ball
        print("iter")

    def get_robust_img(self):
        return self.x_rob
'''


def stand_in_checkout(root: Path) -> Path:
    (root / "defenses").mkdir(parents=True)
    (root / "defenses" / "__init__.py").write_text("from .preempt_robust_linf import PreemptRobustLinf\n")
    (root / "defenses" / "preempt_robust_linf.py").write_text(textwrap.dedent(STAND_IN))
    return root


def test_cuda_calls_are_no_ops_inside_and_restored_after() -> None:
    original = torch.Tensor.cuda
    with cpu_only():
        x = torch.zeros(2)
        assert x.cuda() is x
    assert torch.Tensor.cuda is original


def test_the_authors_loop_runs_on_cpu_and_publishes_8_bit_images_inside_the_budget(tmp_path, capsys) -> None:
    defence = authors_defence(stand_in_checkout(tmp_path / "checkout"))
    model = load_checkpoint(TINY_MODEL).model
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = torch.round(x * 255) / 255
    x_rob = run_authors(defence, model, x, chunk=2)
    assert x_rob.shape == x.shape
    assert torch.equal(torch.round(x_rob * 255) / 255, x_rob)  # on the 8-bit grid
    assert (x_rob - x).abs().max() <= EPS + 1e-6
    assert not torch.equal(x_rob, x)  # it moved
    assert "iter" not in capsys.readouterr().out  # their per-step prints are swallowed


def test_a_folder_that_is_not_their_checkout_is_refused(tmp_path) -> None:
    with pytest.raises(SystemExit, match="not a checkout"):
        authors_defence(tmp_path)
