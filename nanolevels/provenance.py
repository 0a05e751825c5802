"""Provenance: one fingerprint family (16 hex digits of a sha256) for tensors, files and code, and
one rule for every cache (the orchestrator's steps, the index, the graph, the prompt program): a
result records what it was made from, and is reused while all of it is unchanged (stale()). A
step's code is its script and every package module it imports, so an edit to lora.py reruns the
steps that use LoRA and no other (code())."""

import ast
import hashlib
import json
import os

import torch

from nanolevels.checkpoint import read_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # code is named relative to it


def _hex(h) -> str:
    return h.hexdigest()[:16]


def tensors(named: dict[str, torch.Tensor]) -> str:
    """Named tensors by value: in name order, each name and shape, then its numbers as float32."""
    h = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach().float().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return _hex(h)


def value(obj) -> str:
    """A JSON-able value (a config, a tokenizer's merges) by its canonical JSON."""
    return _hex(hashlib.sha256(json.dumps(obj, sort_keys=True).encode()))


def model(gpt: torch.nn.Module) -> str:
    """A GPT by what it computes: its config and its state (adapters included)."""
    return value([vars(gpt.config), tensors(gpt.state_dict())])


def checkpoint(path: str) -> str:
    """A safetensors file by its content (tensors, then metadata sorted by key), not by its bytes:
    safetensors writes the metadata in another order in each process, so two saves of one model
    differ."""
    named, metadata = read_safetensors(path)
    h = hashlib.sha256(tensors(named).encode())
    h.update(json.dumps(sorted(metadata.items())).encode())
    return _hex(h)


def files(path: str) -> str:
    """A file by its bytes, or a folder by the files directly in it (names and bytes, in name order;
    temp files a kill left behind are not part of it)."""
    h = hashlib.sha256()
    names = [""]
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if not n.endswith(".tmp"))
    for name in names:
        file = os.path.join(path, name) if name else path
        if os.path.isfile(file):
            with open(file, "rb") as f:
                h.update(f"{name}\0{os.path.getsize(file)}\0".encode())
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return _hex(h)


def of(path: str) -> str | None:
    """Whatever is at path: a checkpoint by content, anything else by bytes; None if it is missing
    or unreadable (what makes it must run again)."""
    if not os.path.exists(path):
        return None
    try:
        return checkpoint(path) if path.endswith(".safetensors") else files(path)
    except ValueError:
        return None


def current(paths: dict[str, str | None]) -> dict[str, str | None]:
    """{name: of(path)} for the named paths that are given (a None path is left out)."""
    return {name: of(path) for name, path in paths.items() if path is not None}


def _imports(path: str) -> set[str]:
    """The nanolevels modules a Python file imports anywhere in it, as paths relative to ROOT."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: only the package's own modules import that way
                base = "nanolevels" + (f".{base}" if base else "")
            # `from nanolevels import lora` imports a module too
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    found = (os.path.join("nanolevels", *n.split(".")[1:]) + ".py"
             for n in names if n.startswith("nanolevels."))
    return {p for p in found if os.path.isfile(os.path.join(ROOT, p))}


def _source(path: str) -> str:
    """A Python file by its syntax tree: an edit to a comment or the layout changes nothing it
    computes."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        text = ast.dump(ast.parse(text))
    except SyntaxError:  # the step fails on it and says where; its bytes still tell that it changed
        pass
    return _hex(hashlib.sha256(text.encode()))


def code(script: str) -> dict[str, str]:
    """{file: fingerprint} of a script (relative to ROOT) and every package module it imports,
    directly or through another: all the code of this repository that a step runs."""
    todo, seen = [script], set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _imports(os.path.join(ROOT, path))
    return {path: _source(os.path.join(ROOT, path)) for path in sorted(seen)}


def stale(recorded: dict | None, now: dict) -> str | None:
    """Why a result must be made again, or None when every fingerprint it recorded matches now's
    ({name: fingerprint}; a value may itself be such a dict, as code() is: then the names that
    differ inside it are named too)."""
    if recorded is None:
        return "no record of what it was made from"
    changed = []
    for name, value in now.items():
        old = recorded.get(name)
        if old == value:
            continue
        if isinstance(value, dict) and isinstance(old, dict):
            inside = sorted(k for k in value.keys() | old.keys() if value.get(k) != old.get(k))
            changed.append(f"{name} ({', '.join(inside)})")
        else:
            changed.append(name)
    return f"its {' and '.join(changed)} changed" if changed else None
