"""Atomic file writes (a reader, or a resumed run, never sees half a file), readers that name a bad file,
`show`, the form in which messages print a path, and `json_digest`, the one way to hash a JSON-able value.

An atomic write goes through `.<name>.<pid>.<random>.tmp` beside its target; a process killed mid-write
(kill -9) leaves that file behind, and `remove_stale_temporaries` (called when a run folder's lock is taken
and before a data cache is written) removes those whose writer is dead, or that are older than a day.
Safetensors files are written with their header's keys sorted, so the same tensors and metadata give the
same bytes, and the same sha256, in every process.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save


# The folder the user typed their command in, when a process runs elsewhere on their behalf (the chain sets it for
# its notebooks' kernels, which run in notebooks/): messages give paths from there.
SHOW_FROM = "LIE_HELPERS_SHOW_FROM"
# Temporary files of atomic writes: `.<target>.<pid>.<8 random>.tmp`, or without the pid (written before it was there).
TEMPORARY = re.compile(r"^\..+?(?:\.(?P<pid>\d+))?\.[a-z0-9_]{8}\.tmp$")
STALE_SECONDS = 24 * 3600     # a temporary file this old is stale whoever wrote it
STALE_SECONDS_UNOWNED = 3600  # the same for one that names no writer


def show(path) -> str:
    """`path` as the user can type it where they are: relative to the folder they ran the command in (the working
    folder, or $LIE_HELPERS_SHOW_FROM) when inside it, else absolute."""
    path = Path(path)
    # The folder resolved, the name kept: a symbolic link is shown as itself, not as its target.
    path = path.parent.resolve() / path.name if path.name not in ("", ".", "..") else path.resolve()
    base = Path(os.environ.get(SHOW_FROM) or Path.cwd()).resolve()
    try:
        return str(path.relative_to(base))
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
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


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(folder, recursive: bool = True) -> list[Path]:
    """Remove the temporary files of atomic writes (TEMPORARY) under `folder` whose writer is dead, or that are older
    than STALE_SECONDS (STALE_SECONDS_UNOWNED when they name no writer); returns them. Other files stay."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]     # os.walk follows no link
    for path in (Path(top) / name for top, _, names in walk for name in names if name.endswith(".tmp")):
        found = TEMPORARY.match(path.name)
        if not found or path.is_symlink() or not path.is_file():
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        pid = int(found["pid"]) if found["pid"] else None
        if pid is None:
            stale = age > STALE_SECONDS_UNOWNED
        else:
            stale = age > STALE_SECONDS or (pid != os.getpid() and not pid_alive(pid))
        if stale:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    """Save a dict of tensors as safetensors, atomically, its header's keys sorted (the same bytes in every
    process). Metadata values become strings."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, _sorted_header(save(tensors, metadata=meta)))


def _sorted_header(data: bytes) -> bytes:
    """A safetensors file with its JSON header rewritten with sorted keys (safetensors writes the metadata in the
    order of a per-process hash map); the tensor bytes and their offsets are unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)          # safetensors pads its header to 8 bytes with spaces
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def load_tensors(path) -> dict:
    """Load a safetensors file, naming the file and the fix when it is missing or corrupt."""
    return _read(path, lambda p: load_file(str(p)), "a safetensors file")


def read_metadata(path) -> dict:
    """The string metadata of a safetensors file, naming the file when it is missing or corrupt."""
    def metadata(p):
        with safe_open(str(p), framework="pt") as f:
            return f.metadata() or {}
    return _read(path, metadata, "a safetensors file")
