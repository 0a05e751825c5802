"""Checkpoints as safetensors (never pickle): one file holds the weights, config and tokenizer.

A second file beside it holds what only a resume needs: the optimizer's state, the step, and the
trainable weights again. Every write is atomic. Names are saved without torch.compile's `_orig_mod.`
prefix (and it is stripped on load), so compiled and plain models read each other's files.
References: huggingface/safetensors; karpathy/nanoGPT's train.py (resuming from ckpt.pt).
"""

import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from nanolevels.files import atomic_write
from nanolevels.model import GPT, GPTConfig
from nanolevels.tokenizer import Tokenizer

COMPILE_PREFIX = "_orig_mod."


def read_safetensors(path: str, what: str = "checkpoint"):
    """(tensors, metadata) of a safetensors file, with a one-line error for a bad path or file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable {what} (corrupt or truncated?): {e}") from None
    return tensors, metadata


def _unique_tensors(module: torch.nn.Module) -> dict:
    """state_dict without the second name of tied weights (safetensors refuses shared memory)."""
    seen, out = set(), {}
    for name, t in module.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name.replace(COMPILE_PREFIX, "")] = t.detach().contiguous().cpu()
    return out


def save_model(path: str, model: GPT, tokenizer: Tokenizer, **meta) -> None:
    """Weights + config + tokenizer (+ any extra string-able metadata, e.g. step) in one file."""
    # safetensors metadata is a flat str -> str dict: the config and tokenizer go in as JSON
    metadata = {"format": "nanolevels-gpt", "config": json.dumps(vars(model.config)),
                "tokenizer": json.dumps(tokenizer.to_dict())}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    atomic_write(path, save(_unique_tensors(model), metadata=metadata))


def load_weights(model: torch.nn.Module, state: dict, path: str) -> None:
    """Copy state into model strictly, except for tied names, which safetensors stores once."""
    state = {k.replace(COMPILE_PREFIX, ""): v for k, v in state.items()}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path} does not fit this model: {wrong[0]} is "
                         f"{tuple(state[wrong[0]].shape)}, the model wants "
                         f"{tuple(own[wrong[0]].shape)}; load it with its own config")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path} does not fit this model: "
                         f"missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")


def load_model(path: str, device="cpu"):
    """(model, tokenizer, metadata) from a file written by save_model."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model at {path}; make one with: python train_pretrain.py")
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != "nanolevels-gpt":
        raise ValueError(f"{path} is not a nanolevels model checkpoint (no config in its metadata)")
    config = GPTConfig(**json.loads(metadata["config"]))
    tokenizer = Tokenizer.from_dict(json.loads(metadata["tokenizer"]))
    model = GPT(config)
    load_weights(model, tensors, path)
    extra = {k: json.loads(v) for k, v in metadata.items()
             if k not in ("format", "config", "tokenizer")}
    return model.to(device), tokenizer, extra


def read_metadata(path: str) -> dict:
    """A checkpoint's metadata (JSON-decoded), without building the model."""
    _, metadata = read_safetensors(path)
    return {k: (v if k == "format" else json.loads(v)) for k, v in metadata.items()}


def _trainable(model: torch.nn.Module) -> dict:
    return {name.replace(COMPILE_PREFIX, ""): p for name, p in model.named_parameters()
            if p.requires_grad}


def save_train_state(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                     **meta) -> None:
    """Everything a resume needs in one file: trainable weights, optimizer state, the step."""
    sd = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().contiguous().cpu()
               for i, s in sd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    # the weights again, though the model (or adapter) file written just before holds them: a kill
    # between the two writes leaves this file one save behind, never a mix of two steps
    tensors.update({f"weights.{name}": p.detach().contiguous().cpu()
                    for name, p in _trainable(model).items()})
    metadata = {"format": "nanolevels-train-state", "step": str(step),
                "param_groups": json.dumps(sd["param_groups"]), "meta": json.dumps(meta)}
    atomic_write(path, save(tensors, metadata=metadata))


def load_train_state(path: str, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore the trainable weights and the optimizer in place; return (step, extra metadata)."""
    tensors, metadata = read_safetensors(path, "training state")
    if metadata.get("format") != "nanolevels-train-state":
        raise ValueError(f"{path} is not a nanolevels training state")
    weights = {name.removeprefix("weights."): t for name, t in tensors.items()
               if name.startswith("weights.")}
    own = _trainable(model)
    groups = json.loads(metadata["param_groups"])
    if (weights.keys() != own.keys() or any(weights[k].shape != p.shape for k, p in own.items())
            or [len(g["params"]) for g in groups]
            != [len(g["params"]) for g in optimizer.param_groups]):
        raise ValueError(f"{path} was saved for other trainable parameters; "
                         "resume with the same flags")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(weights[name])
    state: dict = {}
    for name, t in tensors.items():
        if not name.startswith("weights."):
            i, key = name.split(".", 1)
            state.setdefault(int(i), {})[key] = t
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return int(metadata["step"]), json.loads(metadata["meta"])
