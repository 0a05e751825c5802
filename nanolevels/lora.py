"""LoRA written out by hand: low-rank adapters on the GPT's Linear layers, merge, adapter files.

A frozen weight W0 (out, in) learns a low-rank change B @ A, with A (r, in) and B (out, r):
y = W0 x + (alpha / r) * B(A(dropout(x))). The API follows minLoRA: add_lora, merge_lora /
unmerge_lora (bit-exact), set_lora_enabled, remove_lora, lora_state_dict, and save_adapter /
load_adapter, whose file records which base model it belongs to.
References: LoRA (arXiv 2106.09685), rsLoRA (arXiv 2312.03732), cccntu/minLoRA,
rasbt/LLMs-from-scratch appendix E.
"""

import json
import math
import os

import torch
import torch.nn as nn
from safetensors.torch import save

from nanolevels import provenance
from nanolevels.checkpoint import COMPILE_PREFIX, decode_metadata, load_model, read_safetensors
from nanolevels.files import atomic_write, write_json

# module-name suffixes; add "mlp.c_fc", "mlp.c_proj" to adapt the MLP too
DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj")
# what an adapter file's metadata must hold for load_adapter, and of what type
ADAPTER_FIELDS = {"r": int, "alpha": (int, float), "dropout": (int, float), "rslora": bool,
                  "targets": list, "base_fingerprint": str}


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base(x) + scale * B(A(dropout(x)))."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be at least 1, got {r}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.rslora = r, alpha, rslora
        # alpha / r, the paper's (alpha=16, r=8: 2), keeps the update's size as r changes, so a new
        # r needs no new learning rate; rsLoRA finds it too small at large r and takes alpha/sqrt(r)
        self.scale = alpha / math.sqrt(r) if rslora else alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features,
                                               device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r,
                                               device=w.device, dtype=w.dtype))  # (out, r)
        # A kaiming-uniform (nn.Linear's init of its own weight), B zero: B @ A = 0, so a fresh
        # adapter leaves the output exactly as it was and training starts from the pretrained model
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.enabled = True  # False: behave exactly like the base layer (set_lora_enabled)
        self.merged = False  # True: the update lives inside base.weight (merge)
        # while merged, the exact W0 to put back: a buffer, so .to() moves it; not in any file
        self.register_buffer("weight_before_merge", None, persistent=False)

    def forward(self, x):
        y = self.base(x)
        if self.enabled and not self.merged:
            # (..., in) @ (in, r) @ (r, out): through the rank-r bottleneck, never (out, in)
            y = y + self.scale * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)
        return y

    @torch.no_grad()
    def merge(self):
        """W0 += scale * B @ A, in float32, cast back to the weight's dtype. Twice is once."""
        if self.merged:
            return
        if not self.enabled:
            raise ValueError("cannot merge a disabled LoRA adapter: "
                             "enable it first (set_lora_enabled)")
        w = self.base.weight
        # for unmerge: (w + d) - d can differ from w in the last bits (badly so in bfloat16), and
        # the base fingerprint with it. The cost: a copy of the wrapped matrices while merged.
        self.weight_before_merge = w.detach().clone()
        # (out, r) @ (r, in): a matrix the shape of W0, so merged inference costs what the base does
        w.copy_(w.float() + self.scale * (self.lora_B.float() @ self.lora_A.float()))
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """Undo merge() bit for bit: put back the W0 that merge() kept."""
        if not self.merged:
            return
        self.base.weight.copy_(self.weight_before_merge)
        self.weight_before_merge = None
        self.merged = False


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRALinear modules by name (without torch.compile's `_orig_mod.` prefix)."""
    return {name.replace(COMPILE_PREFIX, ""): m for name, m in model.named_modules()
            if isinstance(m, LoRALinear)}


def covers(name: str, target: str) -> bool:
    """Whether target, a suffix, adapts name ('attn.c_attn' does 'transformer.h.0.attn.c_attn')."""
    return name == target or name.endswith("." + target)


def add_lora(model: nn.Module, targets=DEFAULT_TARGETS, r: int = 8, alpha: float = 16.0,
             dropout: float = 0.0, rslora: bool = False) -> list[str]:
    """Wrap every nn.Linear whose name ends with one of targets in a LoRALinear; freeze the rest.

    A target matches whole name parts: "attn.c_proj" matches transformer.h.0.attn.c_proj, not
    mlp.c_proj. Afterwards only lora_A / lora_B have requires_grad. Returns the wrapped names.
    """
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters; "
                         "remove_lora(model) before adding new ones")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    matches = {t: {name for name in linears if covers(name, t)} for t in targets}
    for target, names in matches.items():
        if not names:
            example = linears[0] if linears else "transformer.h.0.attn.c_attn"
            raise ValueError(f"no module matches target '{target}'; "
                             f"module names look like {example}")
    model.requires_grad_(False)  # before wrapping, so the new lora_A / lora_B stay trainable
    # in model order
    wrapped = [name for name in linears if any(name in names for names in matches.values())]
    for name in wrapped:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, LoRALinear(getattr(owner, child), r, alpha, dropout, rslora))
    return [name.replace(COMPILE_PREFIX, "") for name in wrapped]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight: as fast as the base model, the same outputs."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every adapter back out of its base weight, restoring W0 exactly."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch the adapters off (the base model's outputs) or on, e.g. to compare the two."""
    layers = lora_layers(model).values()
    if any(layer.merged for layer in layers):
        raise ValueError("the adapters are merged into the weights; "
                         "unmerge_lora(model) before switching them")
    for layer in layers:
        layer.enabled = enabled


def remove_lora(model: nn.Module) -> None:
    """Put the plain nn.Linear layers back and make every parameter trainable, as in a fresh model.

    The base weights stay as they are: merge_lora(model) first to keep the adapters' effect.
    """
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.base)
    model.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, e.g. "transformer.h.0.attn.c_attn.lora_A", sharing model memory."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


def lora_param_count(model: nn.Module) -> int:
    """Trainable adapter numbers: r * (in + out) per wrapped matrix, not its in * out."""
    # 128 -> 384 at r=8: 4,096 instead of 49,152; AdamW keeps moments and the file holds only these
    return sum(t.numel() for t in lora_state_dict(model).values())


def base_fingerprint(model: nn.Module) -> str:
    """provenance.tensors of the model as it was before add_lora: the same for a plain checkpoint,
    the model with adapters, and the model with adapters merged."""
    # tied weights once (named_parameters); no adapter tensors; a wrapped layer under its plain
    # name (c_attn.weight, not c_attn.base.weight), and a merged one with the W0 it keeps
    params = {name.replace(COMPILE_PREFIX, ""): p for name, p in model.named_parameters()}
    for name, layer in lora_layers(model).items():
        for key in ("lora_A", "lora_B", "base.weight", "base.bias"):
            params.pop(f"{name}.{key}", None)
        params[f"{name}.weight"] = layer.weight_before_merge if layer.merged else layer.base.weight
        if layer.base.bias is not None:
            params[f"{name}.bias"] = layer.base.bias
    return provenance.tensors(params)


def save_adapter(path: str, model: nn.Module, **meta) -> None:
    """Write the adapter tensors (not the base) and what load_adapter needs to a safetensors file.

    Metadata: format, r, alpha, dropout, rslora, targets (the wrapped module names),
    base_fingerprint, plus any extra JSON-able meta (e.g. step=600).
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; add_lora(model) first")
    first = next(iter(layers.values()))  # add_lora gives every layer the same settings
    metadata = {"format": "nanolevels-lora", "r": first.r, "alpha": first.alpha,
                "dropout": first.dropout.p, "rslora": first.rslora, "targets": list(layers),
                "base_fingerprint": base_fingerprint(model)}
    clash = sorted(metadata.keys() & meta.keys())
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved for the adapter's own settings; "
                         "rename them")
    metadata = {k: (v if k == "format" else json.dumps(v)) for k, v in (metadata | meta).items()}
    tensors = {k: t.contiguous().cpu() for k, t in lora_state_dict(model).items()}
    atomic_write(path, save(tensors, metadata=metadata))


def load_adapter(path: str, model: nn.Module) -> dict:
    """Load an adapter file into model and return its metadata (JSON-decoded); refuse a file made
    for another base model."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no LoRA adapter at {path}; make one with: python train_lora.py")
    tensors, raw = read_safetensors(path, "LoRA adapter")
    if raw.get("format") != "nanolevels-lora":
        raise ValueError(f"{path} is not a nanolevels LoRA adapter "
                         "(a full model checkpoint? use load_model)")
    meta = decode_metadata(path, raw, "LoRA adapter", ADAPTER_FIELDS)
    for key, kind in ADAPTER_FIELDS.items():
        if not isinstance(meta[key], kind):
            raise ValueError(f"{path}: the adapter's {key} is {meta[key]!r}; the file is damaged "
                             "or was not written by save_adapter")
    ours = base_fingerprint(model)
    if meta["base_fingerprint"] != ours:
        raise ValueError(f"adapter {path} was trained on another base model (fingerprint "
                         f"{meta['base_fingerprint']} != {ours}); "
                         "load it onto the checkpoint it was trained from")
    layers = lora_layers(model)
    # a model without adapters gets the file's; one with some gets their tensors replaced (a swap)
    if not layers:
        add_lora(model, meta["targets"], r=meta["r"], alpha=meta["alpha"], dropout=meta["dropout"],
                 rslora=meta["rslora"])
        layers = lora_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("the model's adapters are merged; "
                         "unmerge_lora(model) before loading another adapter")
    first = next(iter(layers.values()))
    own = lora_state_dict(model)
    if (own.keys() != tensors.keys() or any(own[k].shape != t.shape for k, t in tensors.items())
            or (first.r, first.alpha, first.rslora) != (meta["r"], meta["alpha"], meta["rslora"])):
        raise ValueError(f"{path} does not fit the model's LoRA layers (other targets, r or "
                         "alpha); remove_lora(model) first, and load_adapter adds the right ones")
    with torch.no_grad():
        for key, t in tensors.items():
            own[key].copy_(t)
    return meta


def load_adapted(path: str, adapter: str | None = None, device="cpu"):
    """(model in eval mode, tokenizer): the checkpoint at path, with the adapter on it if given."""
    model, tokenizer, _ = load_model(path, device)
    if adapter is not None:
        load_adapter(adapter, model)
    return model.eval(), tokenizer


def save_peft_adapter(folder: str, model: nn.Module, base: str = "..") -> list[str]:
    """Write the model's adapters as peft's LoRA layout for the GPT-2 that save_hf_gpt2 writes
    (base: that folder, as the adapter's config names it): the paths written."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; load_adapter first")
    if any(layer.merged for layer in layers.values()):
        raise ValueError("the adapters are merged; unmerge_lora(model) before saving them apart")
    first = next(iter(layers.values()))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
              "r": first.r, "lora_alpha": first.alpha, "lora_dropout": first.dropout.p,
              "use_rslora": first.rslora, "bias": "none", "inference_mode": True,
              # the full module names, which peft matches exactly; GPT-2's Conv1D stores its
              # weight (in, out), so peft transposes B @ A: fan_in_fan_out
              "target_modules": list(layers), "fan_in_fan_out": True}
    # peft's names: the model under base_model.model, then lora_A.weight (r, in) and lora_B.weight
    # (out, r): the shapes of ours, as peft's lora_A and lora_B are nn.Linear layers
    tensors = {f"base_model.model.{name}.weight": t.contiguous().cpu()
               for name, t in lora_state_dict(model).items()}
    paths = [os.path.join(folder, "adapter_config.json"),
             os.path.join(folder, "adapter_model.safetensors")]
    write_json(paths[0], config)
    atomic_write(paths[1], save(tensors, metadata={"format": "pt"}))
    return paths
