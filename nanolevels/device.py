"""Device switch: --device auto|cpu|cuda|mps, --dtype, autocast where it helps, and seeding.

Weights stay float32; a lower --dtype runs forward and backward under autocast (bf16 on cuda: fast
and safe; fp16 also needs train.py's loss scaler; on the CPU float32 is fastest for this model).
References: karpathy/nanoGPT (train.py's device, dtype and autocast context).
"""

import contextlib
import random
import resource
import sys

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """The torch.device for a --device value; ValueError (one line) if it is not available here."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but this machine has no CUDA GPU; "
                         "use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for but MPS is not available here; "
                         "use --device cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for a --dtype value, checked against the device."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("--dtype float16 is not supported on the CPU; use float32 or bfloat16")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bfloat16; use --dtype float16 or float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """A context for the forward pass: autocast to dtype, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_device(seed: int, device: torch.device) -> None:
    """Seed the generators torch draws from on device (and the CPU's) as torch.manual_seed does;
    that one also queues a seed for each backend this machine lacks, formatting the call stack
    every time: too slow for every training step (python bench/bench_nanogpt.py --clock cpu)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current GPU's, the one this process trains on
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def peak_rss_mb(usage=None) -> float:
    """Peak resident memory in MB of this process, or of the one whose usage (os.wait4) is given."""
    rss = (usage or resource.getrusage(resource.RUSAGE_SELF)).ru_maxrss  # KB; bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
