"""Start or resume a training run in a run folder (what ``mrct train`` calls)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from mrct.config import to_dict
from mrct.errors import ConfigError, MrctError, OutputBusyError, OutputExistsError, ReadError, WriteError
from mrct.folder_locks import folder_lock
from mrct.io.atomic import OS_LITTER, check_writable
from mrct.io.leftovers import LEFTOVER
from mrct.jsontext import parse_json
from mrct.training import checkpoint
from mrct.training.config import TrainConfig
from mrct.training.data import PreparedSet
from mrct.training.distributed import DistContext
from mrct.training.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)
RUN_CONTENTS = ("checkpoints", "tensorboard", "previews", "log.jsonl", "config.json", "data.json")
RUN_MARKS = ("data.json", "log.jsonl", "checkpoints")  # a run was started here (not only a config.json)
LOCK_NAME = ".mrct-train.lock"  # kept (empty) when a run ends, as mrct prepare's and batch's
PREVIEW = re.compile(r"iter_\d{7}\.png")  # what mrct.training.logs writes into previews/


def resolve_device(name: str, dist: DistContext) -> object:
    """``auto``: this process's GPU when there is one, else the CPU; or ``cpu``, ``cuda``, ``cuda:N``."""
    import torch

    from mrct.runtime import parse_device

    if name == "auto":
        name = f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and torch.cuda.is_available():  # else said as given ("--device cuda: ...")
        name = f"cuda:{dist.local_rank}"
    return parse_device(name)


def _prepare_run_dir(
    run_dir: Path, config: TrainConfig, data: PreparedSet, resume: bool, overwrite: bool
) -> Path | None:
    """The checkpoint to resume from, after checking the folder may be used."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError("is a file, not a folder; give the run a folder of its own", run_dir)
    check_writable(run_dir)  # before any work: an ancestor that is a file, /proc, a read-only disk
    here, prepared = Path(os.path.realpath(run_dir)), os.path.realpath(data.root)
    if here.is_relative_to(prepared):  # checkpoints and logs went into the prepared input set
        raise OutputExistsError(
            f"the run folder lies in the prepared set {data.root}; choose another", run_dir
        )
    found = checkpoint.latest(run_dir)
    started = any((run_dir / name).exists() for name in RUN_CONTENTS)
    if started and (overwrite or (resume and found is None)):  # both start again from iteration 0
        _check_only_a_run(run_dir)
    if resume and found is not None:
        try:
            saved = parse_json((run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # deleted or damaged: it was exit 70, "please report"
            why = "missing" if isinstance(err, FileNotFoundError) else f"unreadable ({err})"
            raise ReadError(
                f"holds checkpoints but its config.json is {why}, so the run cannot be checked "
                "and resumed; start a new run (or --overwrite)",
                run_dir,
            ) from None
        _check_same_training(run_dir, saved, to_dict(config))
        _check_same_data(run_dir, data)
        return found
    if resume and started and not overwrite:
        log.warning("%s: no complete checkpoint to resume from; starting again from iteration 0", run_dir)
    if started and not resume and not overwrite:
        raise OutputExistsError(
            "holds a training run; pass --resume to continue it or --overwrite to start again", run_dir
        )
    return None


def _check_only_a_run(run_dir: Path) -> None:
    """``--overwrite`` (or ``--resume`` with no checkpoint) starts again in a folder that holds an
    earlier run and nothing else: it deleted a user's config.json, taken for a run's, and their
    pictures in previews/."""
    if not any((run_dir / name).exists() for name in RUN_MARKS):
        raise OutputExistsError(
            "holds no training run (no data.json, log.jsonl or checkpoints/); --overwrite and "
            "--resume do not empty it (choose another folder)",
            run_dir,
        )

    def foreign(name: str, ours: Callable[[str], object]) -> bool:
        # A killed run's temporaries, and the lock, are the run's too.
        return not (ours(name) or name in OS_LITTER or LEFTOVER.match(name) or name == LOCK_NAME)

    theirs = [e for e in sorted(run_dir.iterdir()) if foreign(e.name, RUN_CONTENTS.__contains__)]
    theirs += [e for e in sorted((run_dir / "previews").glob("*")) if foreign(e.name, PREVIEW.fullmatch)]
    if theirs:
        raise OutputExistsError(
            f"holds {theirs[0].relative_to(run_dir)}, which mrct train does not write; a new start "
            "(--overwrite, or --resume without a checkpoint) empties only a run's own folder",
            run_dir,
        )


def _check_same_data(run_dir: Path, data: PreparedSet) -> None:
    """A run resumes on the prepared set it started with (its manifest, wherever the set lies
    now): on other scans it is no longer the run its data.json, and so its model card, describe."""
    path = run_dir / "data.json"
    if not path.is_file():  # lost, or a run from before data.json was kept
        log.warning(
            "%s: no data.json, so whether it resumes on the set it started with is unchecked", run_dir
        )
        return
    record = checkpoint.read_record(path)
    # Runs started before content_sha256 was recorded compare the manifest's bytes.
    key = "content_sha256" if record.get("content_sha256") else "manifest_sha256"
    started, now = record.get(key), getattr(data, key)
    if started and started != now:
        raise ConfigError(
            f"this run was started on another prepared set ({key.replace('_', ' ')} {str(started)[:12]}…, "
            f"{data.root} has {now[:12]}…); resume it on that set, or start a new run",
            run_dir,
        )


def train_run(
    config: TrainConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    until: int | None = None,
    dist: DistContext | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) ``config`` on the prepared set ``data_dir``, writing into ``run_dir``.

    ``resume`` continues from the newest checkpoint, and starts afresh when there is none
    (so a preemptible job can always pass it). ``until`` stops early at that iteration
    without changing the learning-rate schedule, which stays that of ``optim.iterations``.

    Raises:
        OutputExistsError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite``.
        ConfigError: the config differs from the run's, or from the prepared set's preprocessing.
        ReadError / InputNotFoundError: the prepared set or a checkpoint is unusable.
    """
    dist = dist or DistContext()
    run_dir = Path(run_dir)
    data = PreparedSet.open(data_dir)
    data.check_preprocessing(config.preprocessing)
    torch_device = resolve_device(device, dist)
    dist.start(torch_device.type)  # type: ignore[attr-defined]
    try:
        with _run_lock(run_dir, dist):
            return _train_locked(
                config, data, run_dir, resume, overwrite, until, dist, torch_device, progress
            )
    finally:
        dist.stop()


@contextlib.contextmanager
def _run_lock(run_dir: Path, dist: DistContext) -> Iterator[None]:
    """One ``mrct train`` (one torchrun job, through its main process) per run folder: two wrote
    into one log and checkpoints, and an --overwrite emptied the folder under a running job.

    Every process of a job stops when the main one cannot lock (one all-reduce: the others hung
    in the first collective). A run that fails while holding the lock and wrote no run there
    takes its lock file away again, and the folder when it made it; one that never held the
    lock touches nothing (it would have removed the running job's lock)."""
    locks, refusal = contextlib.ExitStack(), None
    created = had_lock = False
    if dist.is_main and not (run_dir.exists() and not run_dir.is_dir()):  # a file: refused below
        try:
            check_writable(run_dir)
            with contextlib.suppress(FileExistsError):
                run_dir.mkdir(parents=True)
                created = True
            had_lock = (run_dir / LOCK_NAME).exists()
            locks.enter_context(folder_lock(run_dir, LOCK_NAME, "mrct train"))
        except MrctError as err:
            refusal = err
        except OSError as err:
            refusal = WriteError(f"cannot create the run folder: {err.strerror}", run_dir)
    if dist.any(refusal is not None):
        raise refusal or OutputBusyError("the main process could not lock the run folder", run_dir)
    unmade = False
    try:
        with locks:
            try:
                yield
            except BaseException:
                if dist.is_main and not had_lock and not any((run_dir / n).exists() for n in RUN_MARKS):
                    with contextlib.suppress(OSError):
                        (run_dir / LOCK_NAME).unlink()  # while still holding it
                        unmade = created and not os.listdir(run_dir)
                raise
    finally:
        if unmade:  # after the lock's release; fails, harmlessly, if another run wrote there since
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _train_locked(
    config: TrainConfig,
    data: PreparedSet,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    until: int | None,
    dist: DistContext,
    torch_device: object,
    progress: bool,
) -> TrainResult:
    """:func:`train_run` once its run folder is locked."""
    start_from = _prepare_run_dir(run_dir, config, data, resume, overwrite)
    # Built first: a patch the networks cannot take is refused before the folder is touched.
    trainer = Trainer(config, data, run_dir, torch_device, dist)  # type: ignore[arg-type]
    dist.barrier()  # every process has checked the folder before the main one changes it
    if dist.is_main and start_from is None:
        _start_new_run(run_dir, config, data)
    dist.barrier()
    end = config.optim.iterations if until is None else min(until, config.optim.iterations)
    if until is not None and until > end and dist.is_main:
        log.warning("--until %d is past the config's optim.iterations (%d): it stops there", until, end)
    if start_from is not None:
        trainer.restore(start_from)
        log.info("resumed from %s (iteration %d)", start_from.name, trainer.iteration)
    if trainer.iteration >= end:
        if until is not None and trainer.iteration > until:  # "trained to iteration 3" said nothing
            log.warning(
                "%s: --until %d is below the run's iteration %d; nothing to train",
                run_dir,
                until,
                trainer.iteration,
            )
        return TrainResult(run_dir, trainer.iteration, start_from)
    return trainer.train(end, progress=progress)


# How a run is carried out, not what it trains: a run moved to a smaller machine (fewer loader
# workers, gradient checkpointing to fit its memory) resumes. The batches do not depend on the
# workers; the runtime options may change the last bits of the arithmetic.
HOW_NOT_WHAT = ("data.workers", "logging.")
RUNTIME = ("runtime.gradient_checkpointing", "runtime.channels_last", "runtime.compile")


def _check_same_training(run_dir: Path, saved: object, current: dict[str, object]) -> None:
    """Refuse a resume whose config trains something else, naming what differs."""
    changed = _differences(saved, current)
    trained = [key for key in changed if not key.startswith(HOW_NOT_WHAT + RUNTIME)]
    if trained:
        shown = ", ".join(f"{key} {changed[key]}" for key in trained[:3])
        more = f" and {len(trained) - 3} more" if len(trained) > 3 else ""
        raise ConfigError(
            f"this run was started with another config ({shown}{more}); resume it with that config",
            run_dir,
        )
    if changed:
        runtime = any(key.startswith(RUNTIME) for key in changed)
        same = "the last bits may differ from an uninterrupted run" if runtime else "it trains the same"
        shown = ", ".join(f"{key} {value}" for key, value in changed.items())
        log.warning("%s: resuming with %s; %s", run_dir, shown, same)


def _differences(saved: object, current: object, prefix: str = "") -> dict[str, str]:
    """``{"data.workers": "0 -> 2", ...}``: the dotted keys whose values differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: dict[str, str] = {}
        for key in sorted(set(saved) | set(current), key=str):
            out.update(_differences(saved.get(key), current.get(key), f"{prefix}{key}."))
        return out
    return {} if saved == current else {prefix.rstrip("."): f"{saved} -> {current}"}


def _start_new_run(run_dir: Path, config: TrainConfig, data: PreparedSet) -> None:
    """Clear what an earlier run left (only with overwrite) and record the config and data."""
    for name in RUN_CONTENTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n", encoding="utf-8")
    (run_dir / "data.json").write_text(json.dumps(data.describe(), indent=2) + "\n", encoding="utf-8")
