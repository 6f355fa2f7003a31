"""Writing safetensors files, for model packages and training checkpoints alike.

Importing this module is cheap: safetensors and torch are imported when a file is written.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mrct.io.atomic import publish_mode


def save_tensors(state: Mapping[str, Any], target: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, whose failed write (a full disk) is its own
    SafetensorError, raised here as the OSError it reports, so that callers name the file."""
    import safetensors.torch
    from safetensors import SafetensorError

    try:
        safetensors.torch.save_file(dict(state), str(target), metadata=metadata)
    except SafetensorError as err:
        # "... IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })"
        code = re.search(r"code: (\d+)", str(err))
        reason = re.search(r'message: "([^"]*)"', str(err))
        raise OSError(
            int(code.group(1)) if code else errno.EIO, reason.group(1) if reason else str(err), str(target)
        ) from None
    with contextlib.suppress(OSError):  # for the group's use; FAT drives refuse it (EPERM)
        publish_mode(target, directory=False)  # packages and checkpoints alike
