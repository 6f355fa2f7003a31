"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``RUN/checkpoints/iter_0001000/``:

- ``networks.safetensors``: both generators and both discriminators (``generators.mr_to_ct.*``
  and so on);
- ``optimizers.safetensors`` + ``state.json``: Adam moments and steps, the param groups,
  the learning-rate schedule, the AMP gradient scaler, the iteration, the config;
- ``rank<R>.safetensors``: each process's history pools (with their generators) and its torch
  random state, so a resumed run draws exactly what the uninterrupted one would have.

It is written under a temporary name and renamed, then ``checkpoints/latest`` is updated,
so an interrupted save never leaves a half checkpoint that ``--resume`` would pick.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mrct.errors import ReadError
from mrct.jsontext import parse_json
from mrct.tensor_files import save_tensors

log = logging.getLogger(__name__)

LATEST = "latest"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict as safetensors wants it: contiguous CPU tensors that share no memory."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def flatten_optimizer(state: dict[str, Any], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and plain values (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                plain["state"].setdefault(str(index), {})[key] = value
    return tensors, plain


def unflatten_optimizer(
    tensors: dict[str, torch.Tensor], plain: dict[str, Any], prefix: str
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        head, index, name = key.split(".", 2)
        if head == prefix:
            state.setdefault(int(index), {})[name] = value
    for index, values in plain["state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": plain["param_groups"]}


def rank_state(pools: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """One process's random state and history pools, as tensors."""
    out = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    for name, pool in pools.items():
        out.update({f"pool.{name}.{k}": v for k, v in pool.state_dict().items()})
    return out


def restore_rank_state(state: dict[str, torch.Tensor], pools: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in state:
        torch.cuda.set_rng_state(state["rng.cuda"], device)
    for name, pool in pools.items():
        prefix = f"pool.{name}."
        pool.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def begin(run_dir: Path, iteration: int) -> Path:
    """The temporary folder a checkpoint is written into (rank 0 creates it)."""
    tmp = run_dir / "checkpoints" / f".tmp-{checkpoint_name(iteration)}"
    # One checkpoint is written at a time (the run folder is locked): any other temporary is a
    # killed run's, holding disk space for nothing.
    for stale in (*tmp.parent.glob(".tmp-iter_*"), tmp):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_rank(tmp: Path, rank: int, state: dict[str, torch.Tensor]) -> None:
    save_tensors(_tensors(state), tmp / f"rank{rank}.safetensors")


def finish(
    tmp: Path,
    networks: dict[str, torch.Tensor],
    optimizers: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write the shared files, publish the folder, point ``latest`` at it, prune old ones."""
    try:
        save_tensors(_tensors(networks), tmp / "networks.safetensors")  # a full disk: an OSError naming it
        save_tensors(_tensors(optimizers), tmp / "optimizers.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    except BaseException:  # a full disk, Ctrl-C: the half-written checkpoint would hold its space
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # On disk before the renames that publish them: after a crash or power cut, a renamed folder
    # could otherwise hold empty files, and --resume stopped at it.
    for written in (*tmp.iterdir(), tmp):
        _fsync(written)
    final = tmp.parent / tmp.name.removeprefix(".tmp-")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = tmp.parent / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n", encoding="utf-8")
    _fsync(pointer)
    os.replace(pointer, tmp.parent / LATEST)
    _fsync(tmp.parent)
    _prune(tmp.parent, keep, final.name)
    return final


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to the disk (a file system that cannot: skipped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # EINVAL on some network and special file systems
            os.fsync(fd)
    finally:
        os.close(fd)


def _prune(folder: Path, keep: int, newest: str) -> None:
    done = sorted(p for p in folder.glob("iter_*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)


def read_record(path: Path) -> dict[str, Any]:
    """A run's JSON record (config.json, data.json, a checkpoint's state.json), or ReadError
    naming it."""
    try:
        value = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReadError(f"unreadable run record ({err})", path) from err
    if not isinstance(value, dict):
        raise ReadError("run record is not a JSON object; damaged?", path)
    return value


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a run's ``log.jsonl``; a line cut short by a hard kill (or otherwise not a
    JSON object with an iteration) is left out rather than stopping a resume or an export."""
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = parse_json(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("iteration"), int):
            entries.append(entry)
    return entries


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None.

    That is the one ``latest`` points at; when the pointer is missing, unreadable or names a
    folder that is gone or incomplete (deleted by hand, a damaged disk), the newest complete
    ``iter_*`` folder, with a warning, so that ``--resume`` never starts a long run afresh
    while a checkpoint of it remains.
    """
    folder = run_dir / "checkpoints"
    pointer = folder / LATEST
    named = None
    with contextlib.suppress(OSError, UnicodeDecodeError):
        named = pointer.read_text(encoding="utf-8").strip()
    # The pointer names a folder beside it; one edited to lead elsewhere (``../other``, an
    # absolute path) is ignored like a damaged one, so resume/export never reads another run.
    ours = not named or ("/" not in named and "\\" not in named and named not in (".", ".."))
    if named and ours and _complete(folder / named):
        return folder / named
    found = sorted(p for p in folder.glob("iter_*") if _present(p)) if folder.is_dir() else []
    complete = [p for p in found if _complete(p)]
    if not complete:
        # Damaged ones only: the newest, whose loading names the damage, rather than None,
        # which would start the run afresh over them.
        return found[-1] if found else None
    why = f"points at {named}, which is missing or incomplete" if named else "is missing"
    why = why if ours else f"points outside this run ({named})"
    log.warning("%s: the latest pointer %s; using %s", folder, why, complete[-1].name)
    return complete[-1]


def _present(path: Path) -> bool:
    return all(
        (path / name).is_file() for name in ("state.json", "networks.safetensors", "optimizers.safetensors")
    )


def _complete(path: Path) -> bool:
    """Every shared file there, and whole: a file cut short (a crash before the data reached the
    disk) makes the checkpoint incomplete, so :func:`latest` passes on to an older one."""
    if not _present(path):
        return False
    tensors = [
        path / "networks.safetensors",
        path / "optimizers.safetensors",
        *path.glob("rank*.safetensors"),
    ]
    try:
        parse_json((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(_whole_safetensors(f) for f in tensors)


def _whole_safetensors(path: Path) -> bool:
    """A safetensors file as long as its header says: an 8-byte header size, the JSON header,
    then the tensors' bytes up to the largest end offset. Read without loading the tensors."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100_000_000:
                return False
            header = json.loads(f.read(size))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return path.stat().st_size >= 8 + size + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return False


def load(
    path: Path, rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """Networks, optimiser tensors, the JSON state, and this rank's state of a checkpoint."""
    try:
        state = parse_json((path / "state.json").read_text(encoding="utf-8"))
        rank_file = path / f"rank{rank}.safetensors"
        if not rank_file.is_file() and rank >= int(state.get("world_size", 1)):
            # A process the saving run did not have (resuming on more GPUs): it starts with
            # empty image pools; the trainer warns that the resumed run is not exact.
            return (
                load_file(str(path / "networks.safetensors")),
                load_file(str(path / "optimizers.safetensors")),
                state,
                {},
            )
        if not rank_file.is_file():
            raise ReadError(
                f"has no state for process {rank}; resume with the same number of processes "
                f"({state.get('world_size', 1)})",
                path,
            )
        return (
            load_file(str(path / "networks.safetensors")),
            load_file(str(path / "optimizers.safetensors")),
            state,
            load_file(str(rank_file)),
        )
    except (OSError, ValueError, SafetensorError) as err:
        # One line, whatever the reader's message holds.
        raise ReadError(f"not a readable checkpoint ({' '.join(str(err).split())})", path) from err
