"""The training side of the API (``mrct prepare``, ``train``, ``export``, ``evaluate``), re-exported
by :mod:`mrct.api`. Each takes plain values and returns plain results; torch is imported only
inside the functions that need it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrct.api_args import int_arg, optional_path, path_arg, paths_arg, text_arg
from mrct.errors import MrctError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from mrct.evaluate import Evaluation
    from mrct.prepare import PrepareSummary
    from mrct.preprocessing.config import PreprocessConfig
    from mrct.training.trainer import TrainResult

__all__ = ["evaluate", "export", "prepare", "train"]


def prepare(
    mr: Sequence[str | Path],
    ct: Sequence[str | Path],
    out: str | Path,
    *,
    config: str | Path | PreprocessConfig | None = None,
    crop_mm: str | None = None,
    crop_markups: str | Path | None = None,
    no_crop: bool = False,
    workers: int = 1,
    seed: int = 0,
    hold_out_from: str | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Build a training set in ``out`` from MR and CT scans (files, DICOM folders, folders of scans).

    ``config`` is a YAML file (its ``preprocessing:`` section) or a config;
    ``crop_mm`` (``"SUP,INF"``, RAS mm), ``crop_markups`` or ``no_crop`` replace the
    automatic brow-to-jaw slab. ``hold_out_from`` (a shell pattern on scan ids) limits the
    test split to matching scans. See :func:`mrct.prepare.prepare_dataset` for the layout.
    """
    from mrct.prepare import prepare_dataset
    from mrct.preprocessing.config import PreprocessConfig
    from mrct.preprocessing.crop import CropRequest
    from mrct.training.config import load_train_config

    mr_paths, ct_paths = paths_arg(mr, "mr"), paths_arg(ct, "ct")  # a lone str is one path
    out = path_arg(out, "out")
    workers, seed = int_arg(workers, "workers", minimum=1), int_arg(seed, "seed")
    hold_out_from = text_arg(hold_out_from, "hold_out_from")
    if config is not None and not isinstance(config, PreprocessConfig):
        # The whole file is checked (a training config is the usual input), so a misspelt
        # section such as ``preprocesing:`` is an error rather than silently the defaults.
        config = load_train_config(config).preprocessing
    crop = CropRequest.from_options(crop_mm=crop_mm, markups=crop_markups, no_crop=no_crop)
    return prepare_dataset(
        mr_paths,
        ct_paths,
        out,
        config=config,
        crop=crop,
        workers=workers,
        seed=seed,
        hold_out_from=hold_out_from,
        progress=progress,
    )


def train(
    config: str | Path,
    data: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    until: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the CycleGAN of ``config`` (YAML) on a set built by :func:`prepare`.

    Under ``torchrun`` each process trains on its own samples and the gradients are
    averaged (DistributedDataParallel); see :func:`mrct.training.run.train_run`.
    """
    import os

    from mrct.errors import ConfigValueError
    from mrct.training.config import load_train_config
    from mrct.training.distributed import DistContext
    from mrct.training.run import train_run

    for value, what in ((config, "config"), (data, "data"), (run_dir, "run_dir")):
        path_arg(value, what)
    if until is not None:  # checked before the run folder is started
        until = int_arg(until, "until", minimum=1)
    if resume and overwrite:  # --overwrite was ignored: the run resumed
        raise MrctError("give only one of --resume (continue the run) and --overwrite (start it again)")
    try:
        return train_run(
            load_train_config(config),
            data,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            device=device,
            until=until,
            dist=DistContext.from_environment(os.environ),
            progress=progress,
        )
    except ConfigValueError as err:  # a value of this file, found wrong once training starts
        raise err.naming(config) from None


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    checkpoint: str | None = None,
    license: str = "unspecified",
    description: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a training run's generators (newest checkpoint by default) as a model package;
    ``description`` opens its card (training data and their licences, limitations)."""
    from mrct.training.export import export_run

    for value, what in ((run_dir, "run_dir"), (out, "out")):
        path_arg(value, what)
    for text, what in ((name, "name"), (license, "license"), (description, "description")):
        text_arg(text, what)
    optional_path(checkpoint, "checkpoint (a file or checkpoint name)")
    return export_run(
        run_dir,
        out,
        name=name,
        checkpoint_name=None if checkpoint is None else str(checkpoint),
        license=license,
        description=description,
        overwrite=overwrite,
    )


def evaluate(
    pred: str | Path,
    gt: str | Path,
    out: str | Path,
    *,
    mask: str | Path | None = None,
    metric: str = "ct",
    overwrite: bool = False,
) -> Evaluation:
    """Compare predictions with ground truth (files, or folders matched by file name); write a
    per-case CSV to ``out``. ``metric``: ``ct`` (SynthRAD2023 MAE/PSNR/SSIM in HU, and slice
    flicker) or ``mnist-l2`` (Volumetric MNIST). See :mod:`mrct.evaluate`."""
    from mrct.evaluate import evaluate_volumes

    for value, what in ((pred, "pred"), (gt, "gt"), (out, "out")):
        path_arg(value, what)
    optional_path(mask, "mask")
    metric = text_arg(metric, "metric") or "ct"
    return evaluate_volumes(pred, gt, out, mask=mask, metric=metric, overwrite=overwrite)
