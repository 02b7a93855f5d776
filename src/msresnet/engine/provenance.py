"""Where and with what a run was made: the record each run writes beside its config (``RUN/config.yaml``'s
``provenance`` section), so that a result can be traced to the code, the packages and the machine that made it."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["git_revision", "provenance"]


def git_revision(start: Path | None = None) -> str | None:
    """The git commit of the msresnet source tree (``+dirty`` when modified), or None outside a checkout."""
    where = start or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def provenance(checksum: str | None = None, world_size: int = 1) -> dict[str, Any]:
    """Where and with what a run was made: git revision, package versions, host, protocol checksum, time."""
    import torch
    import torchvision

    versions = {"python": platform.python_version(), "torch": str(torch.__version__)}
    versions["torchvision"] = str(torchvision.__version__)
    try:
        import timm

        versions["timm"] = str(timm.__version__)
    except ImportError:  # timm is a dependency, but a provenance record must never fail a run
        versions["timm"] = None
    from msresnet import __version__

    versions["msresnet"] = __version__
    return {
        "git_revision": git_revision(),
        "versions": versions,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "protocol_checksum": checksum,
        "world_size": world_size,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
