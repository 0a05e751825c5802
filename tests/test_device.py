"""--device and --dtype: choices, clear errors, autocast only below float32."""

import contextlib

import pytest
import torch

from nanolevels.device import autocast, pick_device, pick_dtype, seed_device, seed_everything


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS"):
            pick_device("mps")


def test_pick_dtype_and_autocast():
    cpu = torch.device("cpu")
    assert pick_dtype("float32", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError):
        pick_dtype("float16", cpu)
    with pytest.raises(ValueError):
        pick_dtype("int8", cpu)
    assert isinstance(autocast(cpu, torch.float32), contextlib.nullcontext)
    with autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_seed_everything():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_seed_device_draws_as_manual_seed():
    """The training step's seeding: dropout draws what it drew after torch.manual_seed."""
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        x = torch.ones(1000, device=device)
        torch.manual_seed(5)
        a = torch.nn.functional.dropout(x, 0.5)
        seed_device(5, torch.device(device))
        assert torch.equal(a, torch.nn.functional.dropout(x, 0.5)), device
