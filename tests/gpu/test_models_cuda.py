"""Every registered model family, at its tiny preset, runs forward and backward on the device;
the predictive ones give the CPU's outputs for the same weights."""

from __future__ import annotations

import copy

import pytest
import torch

from models import build_model, list_models
from models.registry import get_entry
from tests.test_models import PAIRS, PREDICTIVE, _outputs_sum, spec_and_inputs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", list_models())
def test_every_family_runs_forward_and_backward_on_the_device(name, device):
    torch.manual_seed(0)
    spec, x = spec_and_inputs(name, 6)
    on_cpu = build_model(name, get_entry(name).config_cls.tiny(), spec)
    model = copy.deepcopy(on_cpu).to(device)
    assert all(p.device.type == device.type for p in model.parameters())
    # teacher forcing for seq2seq: the target so far in, logits out
    target = torch.randint(0, PAIRS.num_classes, (6, 6)) if name == "seq2seq" else None
    args = (x,) if target is None else (x, target)
    if name in PREDICTIVE or name == "seq2seq":  # no sampling inside: compare with the CPU
        model.eval(), on_cpu.eval()  # (before training-mode passes move batch-norm stats)
        with torch.no_grad():
            out = model(*(a.to(device) for a in args)).cpu()
        # cuDNN may run fp32 convolutions in TF32 (10-bit mantissa): hence 1e-2
        assert torch.allclose(out, on_cpu(*args), rtol=1e-2, atol=1e-2)
        model.train()
    _outputs_sum(model(*(a.to(device) for a in args))).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
