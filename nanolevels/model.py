"""The GPT language model (GPT-2 architecture), its KV cache, generate(), GPT-2 weights in and out.

Read top to bottom: config, the three modules of a block (attention, MLP, block), the cache,
sampling, the model, and OpenAI's GPT-2 weights read from (and written in) Hugging Face's layout.
References: karpathy/nanoGPT's model.py; Hugging Face's modeling_gpt2.py for the weight names;
PaLM (arXiv 2204.02311) appendix B for the FLOPs per token.
"""

import copy
import math
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

GPT2_URL = "https://huggingface.co/gpt2/resolve/main/model.safetensors"
# GPT-2's Conv1D layers store their weight (in, out), the transpose of nn.Linear's (out, in)
CONV1D = ("c_attn.weight", "c_proj.weight", "c_fc.weight")
# the modules of Hugging Face's GPT-2 under `transformer.`, the same names as ours
HF_MODULE = r"wte|wpe|ln_f|h\.\d+\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
# a Hugging Face GPT-2 config's activation_function -> GPTConfig.gelu ("gelu_new" is GPT-2's)
HF_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


@dataclass
class GPTConfig:
    vocab_size: int  # number of token ids; the tokenizer decides it, so there is no default
    block_size: int = 256  # longest context in tokens (rows of the learned position table)
    n_layer: int = 4  # number of transformer blocks
    n_head: int = 4  # attention heads per block; n_embd is split evenly among them
    n_embd: int = 128  # width of the residual stream (C in the shape comments)
    dropout: float = 0.0  # dropout probability while training; 0.0 turns it off
    bias: bool = True  # biases in the Linear and LayerNorm layers, as in GPT-2
    # the MLP's GELU: "none" is the exact (erf) one, nanoGPT's; "tanh" is GPT-2's approximation,
    # slower on a CPU (python bench/bench_nanogpt.py); GPT-2's weights and older checkpoints keep it
    gelu: str = "none"

    def __post_init__(self):
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} does not split evenly into "
                             f"n_head={self.n_head} heads")
        if self.gelu not in ("none", "tanh"):
            raise ValueError(f"gelu must be 'none' (exact) or 'tanh' (GPT-2's), got {self.gelu!r}")


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        # query, key and value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # output projection back into the residual stream
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, cache=None, layer=0, positions=None):
        B, T, C = x.size()  # batch, sequence length, embedding width
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            k, v, mask = cache.update(layer, k, v, positions)  # (B, nh, L, hs): every token so far
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, positions=None):
        # pre-LayerNorm: each sublayer reads a normalised copy and adds its result to the stream
        x = x + self.attn(self.ln_1(x), cache, layer, positions)
        x = x + self.mlp(self.ln_2(x))
        return x


class KVCache:
    """Keys and values of the tokens seen so far, per layer, so that a new token costs one position.

    One sequence per row. In generate() every row is at the same position, `pos`; a serving engine
    keeps sequences of different lengths in one cache and passes GPT.forward(positions=...).
    """

    def __init__(self, config, batch_size, device=None, dtype=None):
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0  # positions filled; GPT.forward advances it once all layers have written

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def rows(self, start: int, stop: int) -> "KVCache":
        """A cache over rows [start, stop) of this one, sharing its memory, at position 0."""
        view = copy.copy(self)
        view.k, view.v = [k[start:stop] for k in self.k], [v[start:stop] for v in self.v]
        view.pos = 0
        return view

    def expand(self, n: int) -> "KVCache":
        """n copies of this one-row cache at its position, e.g. to continue one prompt n ways."""
        copies = copy.copy(self)
        copies.k, copies.v = ([k.repeat(n, 1, 1, 1) for k in self.k],
                              [v.repeat(n, 1, 1, 1) for v in self.v])
        return copies

    def update(self, layer, k, v, positions=None):
        """Write k, v (B, nh, T, hs) after what each row holds; return (keys, values, mask): the
        keys of [0, L), L the furthest end, and the mask over them (None: one token sees all)."""
        T = k.size(2)
        if positions is None:  # the tokens go to [pos, pos + T) of every row
            end = self.pos + T
            self.k[layer][:, :, self.pos:end] = k
            self.v[layer][:, :, self.pos:end] = v
            # new query i sits at position pos + i and sees keys 0..pos + i; one new token sees all
            mask = (None if T == 1
                    else torch.ones(T, end, dtype=torch.bool, device=k.device).tril(self.pos))
            return self.k[layer][:, :, :end], self.v[layer][:, :, :end], mask
        # row i's tokens go to [positions[i], positions[i] + T)
        at = positions[:, None] + torch.arange(T, device=k.device)  # (B, T)
        rows = torch.arange(k.size(0), device=k.device)[:, None]  # (B, 1)
        self.k[layer][rows, :, at] = k.transpose(1, 2)  # cache[rows[i], :, at[i, j]] is (nh, hs)
        self.v[layer][rows, :, at] = v.transpose(1, 2)
        L = int(at.max()) + 1  # keys up to the furthest row's end; the rest of the block unread
        # (B, T, L): query j of row i sees keys 0..at[i, j], its own row's only
        mask = torch.arange(L, device=k.device) <= at[:, :, None]
        return self.k[layer][:, :, :L], self.v[layer][:, :, :L], mask[:, None]  # mask (B, 1, T, L)


# a temperature under this samples as greedy: logits / 1e-45 overflow, and it is the argmax anyway
GREEDY_BELOW = 1e-5


def check_sampling(temperature: float, top_k=None, top_p=None,
                   names=("temperature", "top_k", "top_p")) -> None:
    """The one check of sampling arguments (generate, prompt.py, the serving engine); the ValueError
    names the argument as the caller's user knows it (names: prompt.py's are flags)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"{names[0]} must be 0 (greedy) or a positive number, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"{names[1]} must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"{names[2]} must be in (0, 1], got {top_p}")


def sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick the next token from logits (B, V) -> (B, 1): greedy below GREEDY_BELOW, else sampled."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(sampling_probs(logits, temperature, top_k, top_p), num_samples=1,
                             generator=generator)


def sampling_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution sample() draws from, (B, V) -> (B, V): softmax(logits / temperature), cut to
    the top_k most likely tokens and/or the smallest set whose probability reaches top_p."""
    logits = logits / temperature
    if top_k is not None:
        # keep the k most likely tokens
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        # keep a token while the likelier ones' mass is below top_p: the smallest set reaching top_p
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return probs


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output layer reads tokens out with the same matrix that embeds them
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the projections into the residual stream by 1/sqrt(number of additions to it)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=False):
        """Number of parameters, tied weights once; non_embedding leaves out the position table."""
        # the token embeddings stay counted: they are also lm_head's weights, used in every forward
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def estimate_flops_per_token(self):
        """Training FLOPs (forward + backward) per token at full context: 6N + 12*L*C*T (PaLM)."""
        cfg = self.config
        return (6 * self.num_params(non_embedding=True)
                + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size)

    def new_cache(self, batch_size):
        """An empty KV cache for batch_size sequences, on the model's device and dtype."""
        weight = self.lm_head.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=weight.dtype)

    def hidden_states(self, idx, cache=None, positions=None):
        """idx (B, T) token ids -> (B, T, C), the final LayerNorm's output: forward() without
        lm_head (retrieval.GPTEmbedder averages these into text vectors)."""
        B, T = idx.size()
        if positions is None:  # the tokens sit at cache.pos onwards (0 without a cache)
            start = 0 if cache is None else cache.pos
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        else:  # row i's tokens sit at positions[i] onwards; the caller keeps count
            start = int(positions.max())
            pos = positions[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size "
                             f"{self.config.block_size}; crop it to the last block_size tokens "
                             "(generate() slides the window itself)")
        # token embeddings + position embeddings: (B, T, C)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, positions)
        if cache is not None and positions is None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, cache=None, positions=None):
        """idx (B, T) token ids -> (logits, loss); loss is None without targets (B, T)."""
        x = self.hidden_states(idx, cache, positions)  # (B, T, C)
        if targets is None and cache is None:
            # the last position only, all generation needs; a list index keeps the time dimension
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, V)
        logits = self.lm_head(x)  # (B, T, V); with a cache, those of the new tokens
        if targets is None:
            return logits, None
        # the mean over targets that are not -100, which marks positions that do not count, e.g.
        # the question in answer-only fine-tuning (data.encode_example)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate_steps(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                       stop_tokens=(), use_cache=True, generator=None):
        """Yield each sequence's next token, (B, 1), up to max_new_tokens times: generate()'s loop,
        for a caller that decides when a batch is done (evaluate.complete stops at the answer)."""
        check_sampling(temperature, top_k, top_p)
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache or idx.size(1) > self.config.block_size:
                # the model sees the last block_size tokens, as nanoGPT crops. Positions are
                # learned and absolute, so once the window slides every token's position changes
                # and the cache cannot be reused: each step is a full forward over the window.
                logits, _ = self(idx[:, -self.config.block_size:])
            elif cache is None:
                cache = self.new_cache(idx.size(0))
                logits, _ = self(idx, cache=cache)  # prefill: the whole prompt at once
            else:
                logits, _ = self(idx[:, -1:], cache=cache)  # only the last sampled token is new
            next_token = sample(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat((idx, next_token), dim=1)
            yield next_token
            if idx.size(0) == 1 and next_token.item() in stop_tokens:
                return

    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        stop_tokens=(), use_cache=True, generator=None):
        """Like generate(), for one sequence idx (1, T), but yield each new token id as it comes."""
        if idx.size(0) != 1:
            raise ValueError("generate_stream takes one sequence (batch size 1), "
                             f"got {idx.size(0)}: use generate() for a batch")
        for token in self.generate_steps(idx, max_new_tokens, temperature, top_k, top_p,
                                         stop_tokens, use_cache, generator):
            yield token.item()

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 stop_tokens=(), use_cache=True, generator=None):
        """Continue idx (B, T) by up to max_new_tokens tokens; return them appended, (B, T + n).

        temperature 0 is greedy (argmax); otherwise sample, from the top_k most likely tokens and/or
        the smallest set whose probability reaches top_p (in (0, 1]). With batch size 1, generation
        stops after a token in stop_tokens, which is included in the output; a batch never stops
        early. Sequences may grow past block_size: the model then sees their last block_size tokens.
        Put the model in eval() mode first, or dropout samples too.
        """
        new_tokens = self.generate_steps(idx, max_new_tokens, temperature, top_k, top_p,
                                         stop_tokens, use_cache, generator)
        return torch.cat([idx, *new_tokens], dim=1)

    @classmethod
    def from_hf_gpt2(cls, path, n_head=None):
        """Load a Hugging Face GPT-2 model.safetensors (any size) from a local file. The head count
        is not in the shapes: n_head, else config.json's beside the file, else n_embd // 64; the
        GELU is that config.json's activation_function (GPT-2's, gelu_new, without one)."""
        from nanolevels.checkpoint import read_hf_config, read_safetensors  # it imports model.py
        tensors, _ = read_safetensors(path, "GPT-2 model.safetensors")
        # the .attn.bias / .attn.masked_bias entries are causal-mask buffers, not weights
        weights = {name.removeprefix("transformer."): tensor for name, tensor in tensors.items()
                   if not name.endswith((".attn.bias", ".attn.masked_bias"))}
        if "wte.weight" not in weights or "wpe.weight" not in weights:
            raise ValueError(f"{path} does not look like GPT-2 weights: no wte.weight / wpe.weight")
        vocab_size, n_embd = weights["wte.weight"].shape
        hf = read_hf_config(path)
        config = GPTConfig(
            vocab_size=vocab_size,
            block_size=weights["wpe.weight"].shape[0],
            n_layer=len({name.split(".")[1] for name in weights if name.startswith("h.")}),
            n_head=n_head or hf.get("n_head") or n_embd // 64,
            n_embd=n_embd,
            bias="ln_f.bias" in weights,
            gelu=HF_GELU[hf.get("activation_function", "gelu_new")],
        )
        model = cls(config)
        params = model.state_dict()  # detached tensors sharing memory with the parameters
        # every tensor in the file must find its place and every parameter be filled (lm_head: tied)
        expected = {name.removeprefix("transformer.") for name in params
                    if name != "lm_head.weight"}
        missing, unexpected = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
        if missing or unexpected:
            raise ValueError(f"{path} does not match a GPT-2 of this shape: "
                             f"missing {missing}, unexpected {unexpected}")
        for name, tensor in weights.items():
            if name.endswith(CONV1D):
                tensor = tensor.t()  # GPT-2's Conv1D stores (in, out); nn.Linear wants (out, in)
            target = params["transformer." + name]
            if tensor.shape != target.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} in the file, "
                                 f"expected {tuple(target.shape)}")
            target.copy_(tensor)
        return model

    def to_hf_gpt2(self) -> dict:
        """The weights under Hugging Face's GPT-2 names, from_hf_gpt2's input: Conv1D weights
        (in, out), lm_head left out (tied to wte), zero biases where bias=False."""
        weights = {}
        for name, module in self.transformer.named_modules():
            if not isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding)):
                continue
            if not re.fullmatch(HF_MODULE, name):  # e.g. a LoRALinear's base layer
                raise ValueError(f"{name} has no place in GPT-2's layout; merge_lora(model) and "
                                 "remove_lora(model) before exporting")
            weight = module.weight.detach()
            weights[f"{name}.weight"] = weight.t() if f"{name}.weight".endswith(CONV1D) else weight
            if not isinstance(module, nn.Embedding):
                bias = module.bias  # GPT-2 always has biases: zeros add nothing
                weights[f"{name}.bias"] = (torch.zeros(weight.size(0), dtype=weight.dtype)
                                           if bias is None else bias.detach())
        return {"transformer." + name: t.contiguous().cpu() for name, t in weights.items()}


def download_gpt2(dest_dir):
    """Fetch GPT-2 small's weights (~550 MB) into dest_dir/model.safetensors once; its path."""
    path = os.path.join(dest_dir, "model.safetensors")
    if os.path.exists(path):
        return path  # written atomically, so an existing file is complete
    os.makedirs(dest_dir, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with urllib.request.urlopen(GPT2_URL, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)  # never leave half a file
        if isinstance(e, (urllib.error.URLError, TimeoutError, ConnectionError)):  # not a full disk
            raise ConnectionError(f"could not download GPT-2 weights (no network?): {e}") from None
        raise
    os.replace(tmp, path)
    return path
