"""Checkpoints as safetensors (never pickle): one file holds the weights, config and tokenizer.

A second file beside it holds what only a resume needs: the optimizer's state, the step, and the
trainable weights again. Every write is atomic. Names are saved without torch.compile's `_orig_mod.`
prefix (and it is stripped on load), so compiled and plain models read each other's files. A model
also goes out as (and comes in from) a Hugging Face GPT-2 folder, which transformers loads.
References: huggingface/safetensors; karpathy/nanoGPT's train.py (resuming from ckpt.pt);
transformers' GPT2Config and save_pretrained layout.
"""

import dataclasses
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from nanolevels.files import atomic_write, write_json
from nanolevels.model import GPT, HF_GELU, GPTConfig
from nanolevels.tokenizer import EOT, Tokenizer

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


def decode_metadata(path: str, metadata: dict, what: str, required=()) -> dict:
    """metadata with every value but `format` JSON-decoded; a required key that is missing or a
    value that is not JSON is a one-line error naming the file."""
    missing = [key for key in required if key not in metadata]
    if missing:
        raise ValueError(f"{path} is not a complete {what}: no {missing[0]!r} in its metadata "
                         "(written by another program, or edited?)")
    decoded = {}
    for key, value in metadata.items():
        try:
            decoded[key] = value if key == "format" else json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: the {key!r} in its metadata is not JSON ({e}); "
                             f"the {what} is damaged: write it again") from None
    return decoded


def config_from_dict(path: str, config) -> GPTConfig:
    """GPTConfig(**config), with a one-line error naming the file for anything but its fields."""
    fields = {f.name: f.type for f in dataclasses.fields(GPTConfig)}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: its config is a JSON {type(config).__name__}, not an object "
                         f"with GPTConfig's fields ({', '.join(fields)})")
    config = {"gelu": "tanh", **config}  # saved before GPTConfig.gelu: trained with GPT-2's
    unknown = sorted(config.keys() - fields.keys())
    if unknown:
        raise ValueError(f"{path}: its config has an unknown key {unknown[0]!r}; GPTConfig's "
                         f"fields are {', '.join(fields)}")
    for key, value in config.items():  # bool is an int to Python; not to a config
        if not (type(value) is fields[key] or fields[key] is float and type(value) is int):
            raise ValueError(f"{path}: its config's {key} is {value!r}, not a "
                             f"{fields[key].__name__}")
    try:
        return GPTConfig(**config)
    except (TypeError, ValueError) as e:  # a missing field, a size below 1
        raise ValueError(f"{path}: its config is not valid ({e})") from None


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
    meta = decode_metadata(path, metadata, "model checkpoint", ("config", "tokenizer"))
    config = config_from_dict(path, meta.pop("config"))
    try:
        tokenizer = Tokenizer.from_dict(meta.pop("tokenizer"))
    except ValueError as e:
        raise ValueError(f"{path}: its tokenizer metadata is not valid ({e})") from None
    model = GPT(config)
    load_weights(model, tensors, path)
    del meta["format"]
    return model.to(device), tokenizer, meta


def read_metadata(path: str) -> dict:
    """A checkpoint's metadata (JSON-decoded), without building the model."""
    _, metadata = read_safetensors(path)
    return decode_metadata(path, metadata, "checkpoint")


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
    meta = decode_metadata(path, metadata, "training state", ("step", "param_groups", "meta"))
    weights = {name.removeprefix("weights."): t for name, t in tensors.items()
               if name.startswith("weights.")}
    own = _trainable(model)
    groups = meta["param_groups"]
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
    return int(meta["step"]), meta["meta"]


def hf_config(model: GPT, tokenizer: Tokenizer) -> dict:
    """config.json of the Hugging Face GPT-2 that computes what model does (transformers'
    GPT2Config names)."""
    cfg = model.config
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,  # None: 4 * n_embd
            "activation_function": "gelu_new" if cfg.gelu == "tanh" else "gelu",  # our MLP's
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default
            "bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id,
            "tie_word_embeddings": True, "dtype": str(model.lm_head.weight.dtype).split(".")[1]}


def save_hf_gpt2(folder: str, model: GPT, tokenizer: Tokenizer) -> list[str]:
    """Write model as a Hugging Face GPT-2 folder, which transformers' GPT2LMHeadModel and
    AutoTokenizer load and from_hf_gpt2 reads back; the paths written."""
    names = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    paths = [os.path.join(folder, name) for name in names]
    write_json(paths[0], hf_config(model, tokenizer))
    # the weights under their GPT-2 names; "format": "pt" is what transformers' loader checks
    atomic_write(paths[1], save(model.to_hf_gpt2(), metadata={"format": "pt"}))
    write_json(paths[2], tokenizer.to_hf())
    # PreTrainedTokenizerFast runs tokenizer.json as it is: GPT2Tokenizer would split GPT-2's way
    write_json(paths[3], {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT,
                          "eos_token": EOT, "model_max_length": model.config.block_size,
                          "clean_up_tokenization_spaces": False})
    return paths


def read_hf_config(weights_path: str) -> dict:
    """The config.json beside a Hugging Face model.safetensors, {} where there is none."""
    path = os.path.join(os.path.dirname(weights_path), "config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable config.json ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a config.json: a JSON {type(config).__name__}")
    n_head = config.get("n_head")  # the two fields from_hf_gpt2 reads
    if n_head is not None and not (type(n_head) is int and n_head >= 1):
        raise ValueError(f"{path}: n_head is {n_head!r}, not a positive whole number")
    if config.get("activation_function", "gelu_new") not in HF_GELU:
        raise ValueError(f"{path}: activation_function is {config['activation_function']!r}; "
                         f"a GPT here runs one of {', '.join(HF_GELU)}")
    return config


def load_hf_gpt2(path: str):
    """(model, tokenizer) from a Hugging Face GPT-2 folder or its model.safetensors: the weights
    first, then the tokenizer.json beside them, else GPT-2's own (tiktoken downloads it once)."""
    weights = path if path.endswith(".safetensors") else os.path.join(path, "model.safetensors")
    model = GPT.from_hf_gpt2(weights)  # a missing or damaged file is named before any download
    tokenizer_path = os.path.join(os.path.dirname(weights), "tokenizer.json")
    tokenizer = (Tokenizer.load(tokenizer_path) if os.path.exists(tokenizer_path)
                 else Tokenizer.gpt2())
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                         f"{model.config.vocab_size}; they do not belong together")
    return model, tokenizer
