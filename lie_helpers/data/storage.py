"""Atomic file writes (a reader, or a resumed run, never sees half a file), readers that name a bad file,
`show`, the form in which messages print a path, and `json_digest`, the one way to hash a JSON-able value."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save


def show(path) -> str:
    """`path` as the user can type it where they are: relative to the working folder when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def json_digest(obj, length: int | None = None) -> str:
    """sha256 hex digest of `obj` as sorted-key JSON (values JSON cannot hold written with str), cut to `length`
    hex digits when given: the key of run folders, profiles, chain stages and study records."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _read(path, reader, what: str):
    """reader(path), naming the file and the fix when it is missing or cannot be read as `what`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        return reader(path)
    except Exception as err:
        raise ValueError(f"{path} is corrupt or not {what} ({err}); "
                         "delete it and re-run the step that writes it.") from err


def read_json(path):
    """Read JSON, naming the file and the fix when it is missing or corrupt."""
    return _read(path, lambda p: json.loads(p.read_text()), "JSON")


def atomic_save_tensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Save a dict of tensors as safetensors, atomically. Metadata values become strings."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_tensors(path) -> dict:
    """Load a safetensors file, naming the file and the fix when it is missing or corrupt."""
    return _read(path, lambda p: load_file(str(p)), "a safetensors file")


def read_metadata(path) -> dict:
    """The string metadata of a safetensors file, naming the file when it is missing or corrupt."""
    def metadata(p):
        with safe_open(str(p), framework="pt") as f:
            return f.metadata() or {}
    return _read(path, metadata, "a safetensors file")
