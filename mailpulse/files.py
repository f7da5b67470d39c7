"""Files written whole or not at all: checkpoints, snapshots, plans."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a reader (or a restart after kill -9 or a power cut) sees
    the old file or the new one, never a part. The data reaches the disk before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
