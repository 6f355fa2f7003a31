"""Time preprocessing of one real 256x256x170 MR series, localisation included.

    python benchmarks/preprocess.py [--data ../shared/data] [--repeats 5] [-o benchmarks/results]

Writes ``preprocess.json`` and ``preprocess.md``. Every figure is the median
over ``--repeats`` runs in one process (imports and the reference head loaded
once, as in a batch), with min..max. Stages, each timed on its own as the
chain's transforms run one by one: read (DICOM -> Volume), mask (reorientation,
working image + head mask), localisation (registration), model grid resampling +
intensity map. ``total`` is read plus one whole ``preprocess()``, what a user
pays per scan. ``cold CLI`` is ``mrct locate`` as a fresh process (imports
included). The reference, timed in the same run, is a plain SimpleITK linear
resample of the same series onto the same 30x256x256 grid: the least work any
preprocessing must do, so ``total / reference`` shows the overhead of the
chain.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrct.script_main import ScriptError, positive_int, run_main

SERIES = "dicom/mr_philips_elition_t1_mprage_sag3d"


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "runs": len(values),
    }


def _reference_resample(volume, record) -> None:  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    from mrct.io.itk import sitk_geometry

    def image(array, affine):  # type: ignore[no-untyped-def]
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, np.float32).transpose(2, 1, 0)))
        spacing, direction, origin = sitk_geometry(affine)
        img.SetSpacing(spacing)
        img.SetDirection(direction)
        img.SetOrigin(origin)
        return img

    src = image(volume.array, volume.affine)
    ref = image(np.zeros(record.grid_shape, np.float32), record.grid_affine_array)
    sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0)


def _chain_stages(volume, localiser) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Seconds of each stage of the chain ``preprocess()`` runs, its transforms applied one by one.

    Each stage is timed directly: a stage found by subtracting others from a whole run is
    the difference of two noisy figures, and under load it came out as nothing or less."""
    import torch
    from monai.data import MetaTensor

    from mrct.preprocessing.chain import LocateSlabd, build_chain
    from mrct.preprocessing.config import PreprocessConfig
    from mrct.preprocessing.crop import CropRequest
    from mrct.volume import Modality

    chain = build_chain(volume.modality or Modality.MR, PreprocessConfig(), CropRequest.auto(), localiser)
    array = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None]
    data = {"image": MetaTensor(array, affine=torch.from_numpy(volume.affine)), "record": {}}
    seconds = dict.fromkeys(("mask", "localise", "resample+intensity"), 0.0)
    stage = "mask"  # reorientation, working image, head mask: everything before the slab is chosen
    for transform in chain.transforms:
        if isinstance(transform, LocateSlabd):
            stage = "localise"
        elif stage == "localise":
            stage = "resample+intensity"  # model grid, resampling, intensity map: all after the slab
        t0 = time.perf_counter()
        data = transform(data)
        seconds[stage] += time.perf_counter() - t0
    if stage != "resample+intensity":
        raise RuntimeError("the chain has no LocateSlabd followed by more transforms; update this benchmark")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    series = args.data / SERIES
    if not series.is_dir():
        raise ScriptError(f"{series}: the real MR series is missing (see ../shared/data/SOURCES.md)")

    t0 = time.perf_counter()
    from mrct.io import read_volume
    from mrct.preprocessing.chain import preprocess
    from mrct.preprocessing.localise import Localiser

    imports_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    localiser = Localiser()
    reference_load_s = time.perf_counter() - t0
    preprocess(read_volume(series), localiser=localiser)  # warm-up (first-call allocations)

    stages: dict[str, list[float]] = {
        k: [] for k in ("read", "mask", "localise", "resample+intensity", "total", "reference")
    }
    for _ in range(args.repeats):
        t_start = time.perf_counter()
        vol = read_volume(series)
        read_s = time.perf_counter() - t_start
        stages["read"].append(read_s)
        for stage, seconds in _chain_stages(vol, localiser).items():
            stages[stage].append(seconds)
        t0 = time.perf_counter()
        out = preprocess(vol, localiser=localiser)
        # read + one full preprocess() is what a user pays per scan.
        stages["total"].append(read_s + time.perf_counter() - t0)
        t_ref = time.perf_counter()
        _reference_resample(vol, out.record)
        stages["reference"].append(time.perf_counter() - t_ref)

    cold = []
    for _ in range(max(1, args.repeats // 2)):
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "mrct", "locate", str(series), "--json"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise ScriptError(f"mrct locate {series}: failed (exit {proc.returncode}): {tail}")
        cold.append(time.perf_counter() - t)

    result: dict[str, Any] = {
        "series": SERIES,
        "shape": list(vol.shape),
        "machine": {
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
        },
        "imports_s": imports_s,
        "reference_head_load_s": reference_load_s,
        "stages": {k: _stats(v) for k, v in stages.items()},
        "cold_cli_locate": _stats(cold),
        "ratio_total_to_reference": statistics.median(stages["total"])
        / statistics.median(stages["reference"]),
        "target_total_s": 10.0,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "preprocess.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Preprocessing one {'x'.join(map(str, vol.shape))} MR series ({SERIES})",
        "",
        f"{args.repeats} runs, median (min..max), seconds. Machine: {result['machine']['cpus']} CPUs.",
        "",
        "| stage | median | min..max |",
        "|---|---|---|",
    ]
    for k, v in result["stages"].items():
        lines.append(f"| {k} | {v['median_s']:.2f} | {v['min_s']:.2f}..{v['max_s']:.2f} |")
    c = result["cold_cli_locate"]
    lines += [
        f"| cold `mrct locate` (new process, imports included) | {c['median_s']:.2f} "
        f"| {c['min_s']:.2f}..{c['max_s']:.2f} |",
        "",
        f"One-time costs per process: imports {imports_s:.2f} s, reference head {reference_load_s:.2f} s.",
        "Total / reference (plain SimpleITK resample onto the same grid): "
        f"{result['ratio_total_to_reference']:.1f}x.",
        "Target: total under 10 s including localisation.",
    ]
    (args.output / "preprocess.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
