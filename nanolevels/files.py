"""File helpers every level uses: atomic writes (temp file + rename), JSON / JSONL and UTF-8 text
read with errors that name the file and line."""

import json
import os
from contextlib import contextmanager


@contextmanager
def atomic_open(path: str):
    """A binary file to write path through, as it is made (a big world's text never sits in
    memory): path is replaced when the block ends, never left half written."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file stands where a folder should
        raise NotADirectoryError(f"cannot write {path}: a file stands where its folder should be; "
                                 f"give a folder") from None
    tmp = f"{path}.{os.getpid()}.tmp"  # a kill -9 can leave it; *.tmp is git-ignored, never read
    with open(tmp, "wb") as f:
        yield f
    os.replace(tmp, path)


def atomic_write(path: str, data: str | bytes) -> None:
    """Write path so that a crash or Ctrl-C leaves the old file or the new one, never half."""
    with atomic_open(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def shown(path: str) -> str:
    """path as a reader wants it: relative to the working directory when inside it, else as is."""
    if not os.path.isabs(path):
        return path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def write_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str, rows) -> None:
    """One JSON value per line, each written as it comes (rows may be a generator)."""
    with atomic_open(path) as f:
        for r in rows:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode())


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_text(path: str) -> str:
    """A UTF-8 file's text; any other encoding is a one-line error that names the file and line."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"line {line} of {path} is not UTF-8 (byte {raw[e.start]:#04x}); "
                         f"save the file as UTF-8") from None


def read_jsonl(path: str) -> list:
    """One JSON value per non-blank line; a line that is not JSON is a one-line error naming it."""
    rows = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"line {n} of {path} is not JSON ({e.msg}); "
                                 f"fix or regenerate the file") from None
    return rows
