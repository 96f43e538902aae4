"""Models load from local files only.

transformers takes a ``from_pretrained`` argument that is not an existing directory for a model
hub repository id and tries to download it. Nothing this workspace runs may leave the machine,
so every path a user gives is checked here first, and the hub is switched off for the process
(``HF_HUB_OFFLINE``, read by huggingface_hub when it is imported).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def local_dir(path: str | Path, what: str) -> Path:
    """``path`` as an existing local directory, or FileNotFoundError saying which one is missing."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{what}: no directory {directory} (models load from local directories only; "
                                "download the weights elsewhere and copy them here)")
    return directory
