"""ONE training loop, shared by pretraining (all weights) and fine-tuning (an adapter, or all
weights).

Each step: forward and backward over grad_accum micro-batches, clip, set the learning rate, step
AdamW; it trains whatever has requires_grad, so LoRA needs nothing special. Around it: the train/val
loss and a dev check every eval_interval steps (a check may stop training), progress lines, a JSONL
log, atomic checkpoints with exact resume, Ctrl-C, and DDP under torchrun.
References: karpathy/nanoGPT's train.py; torch.distributed DDP.
"""

import atexit
import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nanolevels.checkpoint import load_train_state, save_train_state
from nanolevels.device import autocast, peak_rss_mb, pick_device, seed_device
from nanolevels.files import atomic_write, read_jsonl

EVAL_STEP_OFFSET = 10**9  # eval batches use step numbers no training step reaches
STATE_FILE = "train_state.safetensors"  # beside a run's weights file: what --resume reads


def _opt(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # each field is also a command-line flag of the training scripts (see cli.add_config_flags)
    max_steps: int = _opt(3000, "optimizer steps at most (a dev check may stop training sooner)")
    batch_size: int = _opt(8, "sequences per micro-batch, per rank")
    grad_accum: int = _opt(1, "micro-batches per optimizer step (each loss scaled by 1/grad_accum)")
    lr: float = _opt(3e-3, "peak learning rate, reached after the warmup")
    min_lr: float = _opt(3e-4, "the cosine schedule decays to this at max_steps")
    warmup_steps: int = _opt(100, "steps of linear warmup from 0")
    weight_decay: float = _opt(0.1, "AdamW weight decay, on 2-D weights only (not biases, norms)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.95, "AdamW beta2")
    grad_clip: float = _opt(1.0, "max global gradient norm; 0 turns clipping off")
    eval_interval: int = _opt(1000, "steps between train/val loss estimates")
    eval_batches: int = _opt(10, "batches per loss estimate")
    log_interval: int = _opt(100, "steps between progress lines")
    ckpt_interval: int = _opt(1000, "steps between checkpoints (there is always one at the end)")
    seed: int = _opt(1337, "seed of the data order and dropout")
    compile: bool = _opt(False, "torch.compile the model (a slow start; pays off on GPUs)")

    def __post_init__(self):
        """Refuse what cannot train, before it trains (a NaN rate would only show as a NaN loss)."""
        def flag(name):
            return "--" + name.replace("_", "-")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches",
                     "log_interval", "ckpt_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be 0 or more, got {self.warmup_steps}")
        inf = math.inf
        for name, low, high in (("lr", 0, inf), ("min_lr", 0, inf), ("weight_decay", 0, inf),
                                ("beta1", 0, 1), ("beta2", 0, 1), ("grad_clip", 0, inf)):
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value < high) or (name == "lr" and value == 0):
                within = "a positive number" if name == "lr" else (
                    f"in [{low}, {high})" if high < math.inf else f"a number >= {low}")
                raise ValueError(f"{flag(name)} must be {within}, got {value}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine decay to cfg.min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _teardown() -> None:
    """At exit, every rank waits for the others before the process group goes: a rank that tore down
    alone, while rank 0 was still scoring, aborted at exit (SIGABRT) now and then."""
    dist.barrier()
    dist.destroy_process_group()


def setup(device_name: str = "auto") -> tuple[torch.device, Dist]:
    """The device, and torch.distributed (gloo on CPUs, nccl on GPUs) if we run under torchrun (RANK
    is set); each rank takes the GPU of its LOCAL_RANK."""
    device = pick_device(device_name)
    if "RANK" not in os.environ:
        return device, Dist()
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_teardown)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return device, d


ASIDE = "replaced"  # --overwrite moves the old run here; it goes at the new run's first checkpoint


def check_out_dir(out_dir: str, weights_name: str, resume: bool, overwrite: bool, extra=(),
                  ddp: Dist = Dist()) -> list[str]:
    """Never replace a run by accident: a run in out_dir (its weights or training state) is
    continued with --resume or started again with --overwrite; with neither, one line. Returns the
    old run's files that --overwrite replaces (train() sets them aside; extra: the script's own)."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts it again: "
                         "give one of them")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file, not a folder; give a folder for the run")
    if ddp.is_main:
        put_back(out_dir, unless=weights_name)
        for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
            if name.endswith(".tmp"):  # half a write a kill left behind: never read, now gone
                os.remove(os.path.join(out_dir, name))
    held = [n for n in (weights_name, STATE_FILE) if os.path.exists(os.path.join(out_dir, n))]
    if held and not (resume or overwrite):
        raise ValueError(f"{out_dir} already holds a run ({held[0]}); continue it with --resume or "
                         f"start it again with --overwrite")
    names = ("metrics.json", STATE_FILE, weights_name, "log.jsonl", *extra)
    return [n for n in names if overwrite and os.path.exists(os.path.join(out_dir, n))]


def set_aside(out_dir: str, names: list[str]) -> None:
    """Move the old run's files into out_dir/replaced/: none of them (metrics.json above all) may
    pass for the new run's, and until the new run's first checkpoint they can come back."""
    if names:
        os.makedirs(os.path.join(out_dir, ASIDE), exist_ok=True)
    for name in names:
        os.replace(os.path.join(out_dir, name), os.path.join(out_dir, ASIDE, name))


def put_back(out_dir: str, unless: str | None = None) -> None:
    """An --overwrite that ended before its first checkpoint: the run it replaced comes back
    (unless the file `unless` shows that the new run did save one before a kill)."""
    aside = os.path.join(out_dir, ASIDE)
    if not os.path.isdir(aside) or (unless and os.path.exists(os.path.join(out_dir, unless))):
        return
    for name in os.listdir(aside):
        os.replace(os.path.join(aside, name), os.path.join(out_dir, name))
    os.rmdir(aside)
    print(f"{out_dir}: the run an --overwrite set aside is back (the new run made no checkpoint)")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW over the trainable parameters; weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # one pass over each tensor's memory where the CPU's default makes ~10 (an op each): at this
    # size the update is bound by memory (python bench/bench_nanogpt.py); torch 2.4 has the kernel
    fused = device.type == "cuda" or (device.type == "cpu" and torch.__version__ >= "2.4")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def format_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


class _StopFlag:
    """Ctrl-C sets a flag the loop checks between steps, so a checkpoint is never written from
    half-updated weights; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.set = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to quit now)")

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def _any_rank(flag: bool, device, ddp: Dist) -> bool:
    """True on every rank if flag is True on any rank."""
    t = torch.tensor(float(flag), device=device)
    if ddp.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def restore(state_path: str, model, optimizer, scaler, cfg: TrainConfig) -> int:
    """--resume: the trainable weights, the optimizer and the loss scaler from a run's training
    state; the step it holds."""
    run = os.path.dirname(state_path)
    if not os.path.exists(state_path):
        raise FileNotFoundError(f"nothing to resume in {run}: no {STATE_FILE} (the run stopped "
                                f"before its first checkpoint); start it again with --overwrite")
    step, extra = load_train_state(state_path, model, optimizer)
    scaler.load_state_dict(extra["scaler"])
    if step > cfg.max_steps:
        raise ValueError(f"the run in {run} is already at step {step}, past --max-steps "
                         f"{cfg.max_steps}; give a larger --max-steps to train on")
    return step


def trim_log(log_path: str, step: int) -> None:
    """The log as it stood at a checkpoint of `step`: what came after comes again on resume."""
    if os.path.exists(log_path):
        rows = read_jsonl(log_path)
        kept = [r for r in rows if r["step"] < step or (r["step"] == step and "loss" in r)]
        atomic_write(log_path, "".join(json.dumps(r) + "\n" for r in kept))


@torch.no_grad()
def estimate_loss(net, get_batch, cfg: TrainConfig, device, dtype, ddp: Dist) -> dict:
    """{train_loss, val_loss}: the mean over eval_batches fixed batches of each split (all ranks).
    """
    net.eval()
    out = {}
    for split in ("train", "val"):
        total = torch.zeros((), device=device)
        for i in range(cfg.eval_batches):
            x, y = get_batch(split, EVAL_STEP_OFFSET + i, 0)
            with autocast(device, dtype):
                _, loss = net(x.to(device), y.to(device))
            total += loss.float()
        if ddp.world_size > 1:  # SUM then divide: gloo has ReduceOp.AVG only in recent torch
            dist.all_reduce(total)
        out[f"{split}_loss"] = total.item() / cfg.eval_batches / ddp.world_size
    net.train()
    return out


def forward_backward(net, get_batch, cfg: TrainConfig, step: int, scaler, device, dtype, ddp: Dist):
    """One step's gradient over grad_accum micro-batches, each loss scaled by 1/grad_accum (so the
    sum is the mean of their mean losses); returns (the global batch's loss, the tokens it read)."""
    loss_sum, tokens = torch.zeros((), device=device), 0
    for micro in range(cfg.grad_accum):
        x, y = get_batch("train", step, micro)
        x, y = x.to(device), y.to(device)
        sync = micro == cfg.grad_accum - 1 or ddp.world_size == 1  # DDP averages on the last only
        with (nullcontext() if sync else net.no_sync()), autocast(device, dtype):
            _, loss = net(x, y)
        scaler.scale(loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
        tokens += x.numel() * ddp.world_size
    if ddp.world_size > 1:
        dist.all_reduce(loss_sum)  # log the global batch's loss, not one slice's
    return loss_sum.item() / cfg.grad_accum / ddp.world_size, tokens


def optimizer_step(model, optimizer, scaler, cfg: TrainConfig, lr: float) -> None:
    """Clip the gradient's norm, step the optimizer at learning rate lr, clear the gradients."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def progress(step: int, cfg: TrainConfig, loss: float, lr: float, tokens: int, elapsed: float,
             done: int) -> str:
    """The progress line: step, loss, learning rate, throughput and the time left at this pace."""
    eta = elapsed / done * (cfg.max_steps - step)
    return (f"step {step}/{cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
            f"{tokens / max(elapsed, 1e-9) / 1000:.1f}k tok/s | ETA {format_eta(eta)}")


class Run:
    """A training run's state beside the model: its optimizer, its folder (log.jsonl, checkpoints)
    and the step of its last checkpoint, whose weights passed a loss check."""

    def __init__(self, model, cfg: TrainConfig, get_batch, out_dir: str, device, dtype,
                 save_weights, resume: bool, ddp: Dist, log, replaces):
        os.makedirs(out_dir, exist_ok=True)
        self.model, self.cfg, self.get_batch, self.out_dir = model, cfg, get_batch, out_dir
        model.to(device)
        self.device, self.dtype, self.ddp, self.log = device, dtype, ddp, log
        self.save_weights = save_weights
        self.state_path = os.path.join(out_dir, STATE_FILE)
        self.log_path = os.path.join(out_dir, "log.jsonl")
        self.optimizer = make_optimizer(model, cfg, device)
        # the loss scaler of float16 (a no-op otherwise)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.step = 0
        if resume:
            self.step = restore(self.state_path, model, self.optimizer, self.scaler, cfg)
        self.saved = self.step if resume else None
        self.replaces = replaces
        if ddp.is_main and resume:
            trim_log(self.log_path, self.step)
        elif ddp.is_main:
            set_aside(out_dir, list(replaces))  # until this run's first checkpoint
            atomic_write(self.log_path, "")
        if resume:
            log(f"resuming from step {self.step} of {self.state_path}")
        net = DDP(model) if ddp.world_size > 1 else model
        self.net = torch.compile(net) if cfg.compile else net
        self.t_start = time.time()

    def write_log(self, row: dict):
        if self.ddp.is_main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def checkpoint(self, step: int):
        # weights first: a kill between the writes leaves the state (a whole unit) one save behind
        if self.ddp.is_main:
            self.save_weights(step)
            save_train_state(self.state_path, self.model, self.optimizer, step,
                             scaler=self.scaler.state_dict())
            if self.saved is None and self.replaces:
                shutil.rmtree(os.path.join(self.out_dir, ASIDE))  # the old run is replaced now
        self.saved = step

    def evaluate(self, step: int, on_eval) -> str | None:
        """The train/val loss, then on rank 0 on_eval's dev check, logged together with the time so
        far (one plot shows where time went): why to stop here, or None."""
        losses = estimate_loss(self.net, self.get_batch, self.cfg, self.device, self.dtype,
                               self.ddp)
        checked = {}
        if self.ddp.is_main:
            self.log(f"step {step}: train loss {losses['train_loss']:.4f}, "
                     f"val loss {losses['val_loss']:.4f}")
            checked = (on_eval(step) if on_eval else None) or {}
        self.write_log({"step": step, **losses, "elapsed_s": round(time.time() - self.t_start, 2),
                        **{k: v for k, v in checked.items() if k != "stop"}})
        reason = checked.get("stop")
        if not _any_rank(reason is not None, self.device, self.ddp):  # all ranks stop at one step
            return None
        return reason or "a dev check passed"  # the reason itself is known on rank 0

    def diverged(self, loss: float, step: int) -> ValueError:
        """The error of a run whose loss stopped being a number, naming what is kept."""
        kept = "no checkpoint of this run was written"
        if self.saved is not None:
            kept = f"{self.out_dir} keeps the checkpoint of step {self.saved}"
        return ValueError(f"the loss became {loss} at step {step}; {kept}; try a lower --lr")


def train(model, cfg: TrainConfig, get_batch, out_dir: str, device: torch.device,
          dtype: torch.dtype, save_weights, on_eval=None, resume: bool = False, ddp: Dist = Dist(),
          log=print, replaces=()) -> dict:
    """Train model's trainable parameters; return the final metrics. get_batch(split, step,
    micro) gives this rank's (x, y); save_weights(step) writes the weights file (model or adapter);
    on_eval(step) runs on rank 0 after each loss estimate: what its dev check measured goes into the
    log, and a "stop" it returns (the reason) stops training there; replaces: the old run's files
    (check_out_dir), set aside until this run's first checkpoint."""
    run = Run(model, cfg, get_batch, out_dir, device, dtype, save_weights, resume, ddp, log,
              replaces)
    step, tokens_seen, loss, t_start = run.step, 0, None, run.t_start
    stopped, due = f"the step cap (--max-steps {cfg.max_steps})", None
    model.train()
    try:
        with _StopFlag() as stop:
            while step < cfg.max_steps:
                if step % cfg.eval_interval == 0 and (reason := run.evaluate(step, on_eval)):
                    stopped = reason
                    log(f"stopping at step {step} of at most {cfg.max_steps}: {stopped}")
                    run.write_log({"step": step, "stopped": stopped})
                    break
                # dropout's randomness is a function of (seed, step, rank) too: a resume is exact
                seed = np.random.SeedSequence([cfg.seed, step, ddp.rank]).generate_state(1)[0]
                seed_device(int(seed), device)
                lr = lr_at(step, cfg)
                loss, tokens = forward_backward(run.net, get_batch, cfg, step, run.scaler, device,
                                                dtype, ddp)
                if not math.isfinite(loss):
                    raise run.diverged(loss, step)
                if due == step:  # these weights gave a finite loss: now they may be saved
                    run.checkpoint(step)
                optimizer_step(model, run.optimizer, run.scaler, cfg, lr)
                step, tokens_seen = step + 1, tokens_seen + tokens
                if step % cfg.log_interval == 0 or step == cfg.max_steps:
                    elapsed = time.time() - t_start
                    run.write_log({"step": step, "loss": loss, "lr": lr,
                                   "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9)),
                                   "elapsed_s": round(elapsed, 2)})
                    log(progress(step, cfg, loss, lr, tokens_seen, elapsed, step - run.step))
                if _any_rank(stop.set, device, ddp):  # every rank stops at the same step
                    if not all(p.isfinite().all() for p in model.parameters() if p.requires_grad):
                        raise run.diverged(float("nan"), step)
                    run.checkpoint(step)
                    log(f"saved a checkpoint at step {step} in {out_dir}; continue with --resume")
                    raise KeyboardInterrupt
                if step % cfg.ckpt_interval == 0:
                    due = step  # saved once the next step's loss shows these weights are sound
            else:
                log(f"stopping at {stopped}")
        wall_s = time.time() - t_start
        losses = estimate_loss(run.net, get_batch, cfg, device, dtype, ddp)
        if not all(math.isfinite(v) for v in losses.values()):
            raise run.diverged(losses["val_loss"], step)
        run.write_log({"step": step, **losses, "elapsed_s": round(wall_s, 2)})
        run.checkpoint(step)
    except BaseException:
        if run.saved is None and ddp.is_main:
            put_back(out_dir)  # a run that made no checkpoint replaces nothing
        raise
    return {**losses, "steps": step, "stopped": stopped, "tokens_seen": tokens_seen,
            "wall_s": wall_s, "tokens_per_s": tokens_seen / max(wall_s, 1e-9),
            "last_train_loss": loss, "peak_rss_mb": peak_rss_mb()}
