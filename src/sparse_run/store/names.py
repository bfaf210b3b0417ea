"""Run directory names: one path component per run, whatever its overrides hold."""
from __future__ import annotations

import hashlib

MAX_DIRNAME = 200  # file systems allow 255 bytes per path component


def run_id(overrides: str) -> str:
    """The run directory's name from Hydra's ``override_dirname``: one path component whatever the
    values hold (``/`` → ``%2F``, ``%`` → ``%25``), shortened with a hash when too long."""
    name = (overrides or "default").replace("%", "%25").replace("/", "%2F")
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    if len(name.encode()) > MAX_DIRNAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = name.encode()[: MAX_DIRNAME - 13].decode(errors="ignore") + "~" + digest
    return name
