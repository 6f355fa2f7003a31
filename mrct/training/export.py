"""``mrct export``: a run's checkpoint becomes a model package (see :mod:`mrct.models`)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from mrct.config import from_mapping
from mrct.errors import ConfigError, InputNotFoundError, ReadError, first_line
from mrct.model_manifest import NAME_PATTERN
from mrct.training import checkpoint
from mrct.training.config import TrainConfig

log = logging.getLogger(__name__)


def intensity_description(config: TrainConfig) -> dict[str, Any]:
    """How the generators' [-1, 1] outputs map back to scanner units (read by translate)."""
    intensity = config.preprocessing.intensity
    return {
        "ct": {"map": intensity.ct_map, "hu_range": [-1024, 3071], "output_dtype": "int16"},
        "mr": {
            "map": "percentile",
            "percentiles": list(intensity.mr_percentiles),
            "output_range": [0.0, 1000.0],
            "note": "synthetic MR has no physical unit: [-1, 1] is written as 0..1000",
        },
    }


def _final_losses(run_dir: Path, iteration: int) -> dict[str, Any]:
    """``final_losses``: the losses last logged at or before the exported iteration (a record of
    training, not a quality metric), and ``final_losses_iteration``, where they were logged.
    A loss that was not finite is null (JSON has no NaN)."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return {"final_losses": {}}
    for entry in reversed(checkpoint.read_log(path)):
        if entry["iteration"] <= iteration:
            losses = {
                k: v if isinstance(v, (int, float)) and math.isfinite(v) else None
                for k, v in entry.items()
                if k.startswith("loss/")
            }
            return {"final_losses": losses, "final_losses_iteration": entry["iteration"]}
    return {"final_losses": {}}


def _check_name(name: str | None, out: Path) -> str:
    """The model's name: ``name``, else the output folder's; a bad one is an option value mrct
    cannot use (exit code 1), not a damaged package."""
    chosen = out.name if name is None else name
    if NAME_PATTERN.fullmatch(chosen):
        return chosen
    given = f"--name {chosen!r}" if name is not None else f"the output folder's name {chosen!r} (pass --name)"
    raise ConfigError(
        f"{given}: a model name must be letters, digits, '.', '_' or '-', starting with a letter or digit"
    )


def _named_checkpoint(run_dir: Path, name: str) -> Path:
    """``RUN/checkpoints/NAME``, refused unless it is a folder directly in that folder (links resolved):
    ``--checkpoint ../../other`` or an absolute path elsewhere must not export another run."""
    folder = run_dir / "checkpoints"
    path = folder / name
    try:
        inside = path.resolve().parent == folder.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte
        inside = False
    if not inside:
        raise ConfigError(
            "--checkpoint must name a checkpoint folder of this run, in its checkpoints folder "
            "(e.g. iter_0002000)",
            name,
        )
    return path


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    checkpoint_name: str | None = None,
    license: str = "unspecified",
    description: str | None = None,
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write both generators of a run's checkpoint (default: the newest) as a model package.

    Raises:
        ConfigError: a bad ``name``, or ``checkpoint_name`` is not in the run's checkpoints folder.
        InputNotFoundError: the run folder or the checkpoint does not exist.
        ReadError: the run's config or checkpoint is unreadable.
        OutputExistsError / ModelError: from :func:`mrct.models.write_package`.
    """
    from safetensors.torch import load_file

    from mrct.models import write_package

    run_dir = Path(run_dir)
    name = _check_name(name, Path(out))
    if not license.strip() or not license.isprintable():  # one line on the card and in models list
        raise ConfigError(f"--license {license!r}: give the licence as one line of text")
    if not (run_dir / "config.json").is_file():
        raise InputNotFoundError("not a training run folder (no config.json)", run_dir)
    path: Path | None
    if checkpoint_name and checkpoint_name != "latest":
        path = _named_checkpoint(run_dir, checkpoint_name)
    else:  # "latest" too: the run's pointer file of that name (checkpoints/latest) is no folder
        path = checkpoint.latest(run_dir)
    if path is None or not (path / "networks.safetensors").is_file():
        raise InputNotFoundError("no such checkpoint in this run", path or run_dir / "checkpoints")
    config_record = checkpoint.read_record(run_dir / "config.json")
    try:
        config = from_mapping(TrainConfig, config_record)
    except ConfigError as err:
        raise err.naming(run_dir / "config.json") from None
    state, data = checkpoint.read_record(path / "state.json"), {}
    if (run_dir / "data.json").is_file():
        data = checkpoint.read_record(run_dir / "data.json")
    else:  # lost, or a run from before data.json was kept, which resume accepts too
        log.warning("%s: no data.json; the package will not say which prepared set trained it", run_dir)
    if not isinstance(state.get("iteration"), int) or isinstance(state["iteration"], bool):
        raise ReadError("checkpoint state has no iteration number; damaged?", path / "state.json")
    try:
        networks = load_file(str(path / "networks.safetensors"))
    except Exception as err:  # safetensors raises its own SafetensorError for damage
        raise ReadError(
            f"unreadable checkpoint weights ({first_line(err)})", path / "networks.safetensors"
        ) from err
    generators = {
        direction: {
            k.removeprefix(f"generators.{direction}."): v
            for k, v in networks.items()
            if k.startswith(f"generators.{direction}.")
        }
        for direction in ("mr_to_ct", "ct_to_mr")
    }
    iteration = int(state["iteration"])
    training = {
        "config_name": config.name,
        "config": config_record,
        "iterations": iteration,
        "scheduled_iterations": config.optim.iterations,
        "processes": state.get("world_size", 1),
        # The set's folder name alone: a package is shared, and a path (/data/site/cohort_2024)
        # can tell where it was trained; the manifest's checksum identifies the set.
        "data": {**data, "prepared_set": Path(str(data["prepared_set"])).name}
        if "prepared_set" in data
        else data,
        **_final_losses(run_dir, iteration),
    }
    g = config.model.generator
    return write_package(
        out,
        name=name,
        generators=generators,
        generator_config=g,
        preprocessing=config.preprocessing,
        intensity=intensity_description(config),
        training=training,
        metrics=metrics or {},
        license=license,
        description=description
        or f"{g.spatial_dims}D CycleGAN (ngf {g.ngf}, {g.n_residual_blocks} residual blocks) "
        f"for head MR <-> CT, trained {iteration} iterations with config {config.name}.",
        overwrite=overwrite,
    )
