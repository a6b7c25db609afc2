"""Atomic file writes (a reader, or a resumed run, never sees half a file), readers that name a bad file,
and `show`, the form in which messages print a path."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def show(path) -> str:
    """`path` as the user can type it where they are: relative to the working folder when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_tensors(path) -> dict:
    """Load a safetensors file, naming the file and the fix when it is missing or corrupt."""
    from safetensors.torch import load_file

    return _read(path, lambda p: load_file(str(p)), "a safetensors file")


def read_metadata(path) -> dict:
    """The string metadata of a safetensors file, naming the file when it is missing or corrupt."""
    from safetensors import safe_open

    def metadata(p):
        with safe_open(str(p), framework="pt") as f:
            return f.metadata() or {}
    return _read(path, metadata, "a safetensors file")
