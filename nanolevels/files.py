"""File helpers every level uses: atomic writes (temp file + rename) and JSON / JSONL."""

import json
import os


def atomic_write(path: str, data: str | bytes) -> None:
    """Write path so that a crash or Ctrl-C leaves either the old file or the new one, never half."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def shown(path: str) -> str:
    """path as a reader wants to see it: relative to the working directory when it lies inside it
    (data/world, not /home/you/nanolevels/data/world); any other string unchanged."""
    if not os.path.isabs(path):
        return path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def write_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str, rows) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
