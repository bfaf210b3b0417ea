"""Files sparse-run writes and reads back: atomic writes (temp file + rename, the umask respected) and
``load_state``, the one safe way to read a ``.pt`` file (tensors and plain data only, never code).

A killed run or a full disk never leaves a half-written result behind; a truncated, foreign or crafted file
is one ``StateError`` line naming the file.
"""
from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable

import torch

from sparse_run.config.errors import ConfigError

RESTART_HINT = "rerun with restart=true to start this run directory afresh"
_UMASK_LOCK = threading.Lock()


class StateError(ConfigError):
    """A file sparse-run reads back (resume state, masks, checkpoints, ``run.json``, a cache entry) is
    truncated, garbage, foreign or holds more than tensors and plain data; the message names the file."""

    def __init__(self, path: Path | str, message: str):
        super().__init__(str(path), " ".join(message.split()))  # one line, whatever the cause said


def _why(e: BaseException) -> str:
    text = str(e).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds pickled objects other than tensors and plain data; refused, since loading them could run code"
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def load_state(path: Path | str, *, keys: Iterable[str] = (), map_location: Any = None,
               hint: str = RESTART_HINT) -> Any:
    """Every ``.pt`` file sparse-run reads back goes through here: ``torch.load(weights_only=True)``
    unpickles only tensors and plain containers, so a crafted file cannot run code. Unreadable,
    foreign (a dict without ``keys``) or refused files raise one ``StateError`` line naming the file."""
    tail = f"; {hint}" if hint else ""
    try:
        obj = torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise StateError(path, f"is missing{tail}") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, EOF, refused global, bad magic: all one line
        raise StateError(path, f"cannot be read ({_why(e)}){tail}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise StateError(path, f"is not the sparse-run file expected here (missing {', '.join(missing[:5])}){tail}")
    return obj


def plain(obj: Any) -> Any:
    """Numpy scalars in rows become Python numbers, so state files stay loadable with weights_only."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(plain(v) for v in obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):
        return obj.item()
    return obj


def file_mode() -> int:
    """0o666 minus the process umask: what ``open()`` would give a new file (mkstemp gives 0600)."""
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())  # results are shared files: respect the umask, as open() would
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
