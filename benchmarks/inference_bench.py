"""Measurements behind ``benchmarks/run.py``: translate end to end, the generator alone, the
plain-PyTorch reference, and ``mrct batch``. Each function returns plain JSON-able dicts.

Timed values are lists of seconds (one per repeat); ``run.py`` turns them into median and
min..max. Everything that is compared is measured in the same process or the same run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERIES = "dicom/mr_philips_elition_t1_mprage_sag3d"
BUNDLED = "mrct-head-medium"
PAPER_PACKAGE = "paper-3d-untrained"


def build_paper_package(out: Path, seed: int = 0) -> Path:
    """``paper_3d``'s generator (ngf 64, 9 residual blocks, 30x256x256 grid), untrained and seeded,
    written by mrct's own package writer as ``mrct export`` would. Weights do not change timing."""
    import torch

    from mrct.models import write_package
    from mrct.networks import build_generator
    from mrct.training.config import load_train_config
    from mrct.training.export import intensity_description

    config = load_train_config(ROOT / "configs" / "paper_3d.yaml")
    torch.manual_seed(seed)
    generator = build_generator(config.model.generator)
    return write_package(
        out / PAPER_PACKAGE,
        name=PAPER_PACKAGE,
        generators={"mr_to_ct": generator.state_dict()},
        generator_config=config.model.generator,
        preprocessing=config.preprocessing,
        intensity=intensity_description(config),
        training={"note": f"untrained: CycleGAN's N(0, 0.02) initial weights, torch seed {seed}"},
        metrics={},
        license="unspecified",
        description="The paper's 3D generator, untrained, for benchmarks only (its output is not an image).",
    )


# ----------------------------------------------------------------------------- subprocesses


# Linux carries a parent's peak RSS into a child it forks (and through exec when the child was
# vfork'ed, as subprocess does), so a child of this large process would report this process's
# peak as its own. A small launcher process starts the command instead and reports the
# command's own rusage: the launcher's memory is all the command can inherit.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    proc = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024,
                  "rc": os.waitstatus_to_exitcode(status)}))
"""


def run_cli(args: list[str], workdir: Path) -> dict[str, Any]:
    """``python -m mrct ARGS`` as a fresh process: wall time, its own peak RSS, exit code."""
    import json

    out, err = workdir / "stdout.txt", workdir / "stderr.txt"
    command = [sys.executable, "-c", _LAUNCHER, str(out), str(err), sys.executable, "-m", "mrct", *args]
    launched = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(launched.stdout)
    if result["rc"] != 0:
        result["error"] = (err.read_text(errors="replace").strip().splitlines() or ["(no message)"])[-1]
    return result


def startup(work: Path, repeats: int) -> dict[str, list[float]]:
    """Fresh-process wall times: ``mrct --help`` (must not import torch), and the floor that any
    translate pays before its first voxel: importing torch and MONAI (the generator and the
    preprocessing chain are built from them)."""
    out = {"mrct --help": [], "python -c 'import torch, monai'": []}
    for _ in range(repeats):
        out["mrct --help"].append(run_cli(["--help"], work)["wall_s"])
        out["python -c 'import torch, monai'"].append(run_python("import torch, monai", work)["wall_s"])
    return out


def run_python(code: str, workdir: Path) -> dict[str, Any]:
    """``python -c CODE`` as a fresh process, measured like :func:`run_cli`."""
    import json

    out, err = workdir / "stdout.txt", workdir / "stderr.txt"
    command = [sys.executable, "-c", _LAUNCHER, str(out), str(err), sys.executable, "-c", code]
    launched = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(launched.stdout)  # type: ignore[no-any-return]


def translate_end_to_end(package: Path, series: Path, work: Path, repeats: int) -> dict[str, Any]:
    """``mrct translate SERIES --to ct`` (DICOM in, DICOM out, automatic slab), ``repeats`` times;
    each run's ``--report`` gives the split across stages."""
    import json

    runs: list[dict[str, Any]] = []
    for n in range(repeats):
        report = work / f"report{n}.json"
        args = ["translate", str(series), "--to", "ct", "--model", str(package), "-o", f"{work}/sct{n}/"]
        result = run_cli([*args, "--report", str(report), "--quiet"], work)
        if result["rc"] == 0:
            content = json.loads(report.read_text())
            result["timings_s"] = content["timings_s"]
            result["precision"], result["threads"] = content.get("precision"), content.get("threads")
        runs.append(result)
        if result["rc"] != 0:
            break
    return {"runs": runs}


def make_batch_tree(series: Path, root: Path, copies: int) -> Path:
    """``copies`` copies of a DICOM series, each with its own SeriesInstanceUID and SOPInstanceUIDs
    (so a batch sees ``copies`` series, not one series with repeated slices)."""
    import pydicom
    from pydicom.uid import generate_uid

    files = sorted(p for p in series.iterdir() if p.is_file())
    for n in range(copies):
        folder = root / f"subject{n:02d}" / "t1"
        folder.mkdir(parents=True)
        uid = generate_uid()
        for f in files:
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / f.name)
    return root


def batch_throughput(package: Path, tree: Path, work: Path, repeats: int) -> dict[str, Any]:
    """``mrct batch TREE -o OUT --to ct`` as a fresh process per repeat (model load included)."""
    runs = []
    for n in range(repeats):
        args = ["batch", str(tree), "-o", str(work / f"out{n}"), "--to", "ct", "--model", str(package)]
        result = run_cli([*args, "--quiet"], work)
        runs.append(result)
        if result["rc"] != 0:
            break
    return {"runs": runs}


# ----------------------------------------------------------------------------- in-process


def plain_reference(generator: Any) -> Any:
    """The plain-PyTorch generator of ``benchmarks/plain_generator.py`` with ``generator``'s weights
    (the parameters are in the same order), so both compute the same function."""
    import torch
    from plain_generator import plain_generator  # benchmarks/ is on sys.path when run.py runs

    cfg = generator.config
    plain = plain_generator(cfg.ngf, cfg.n_residual_blocks)
    ours, theirs = list(generator.parameters()), list(plain.parameters())
    if [p.shape for p in ours] != [p.shape for p in theirs]:
        raise RuntimeError("the plain reference is not the same architecture")
    with torch.no_grad():
        for src, dst in zip(ours, theirs, strict=True):
            dst.copy_(src)
    return plain.eval()


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    import gc

    gc.collect()
    yield


def time_interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True
) -> dict[str, list[float]]:
    """One warm-up call of each variant (first-call kernel set-up), then ``repeats`` rounds
    calling each once in turn, so that load from other jobs spreads over all variants alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values() if warmup else ():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            with _quiet_gc():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def forward_measurements(
    package: Path, series: Path, repeats: int, variants: str, warmup: bool = True
) -> dict[str, Any]:
    """The generator alone on the series' model-grid input, as ``translate`` calls it
    (``Translator.run``: numpy in, numpy out), against the plain-PyTorch reference.

    ``variants``: ``core`` (mrct fp32 / bf16 and the reference fp32 / bf16), ``layouts`` (also
    mrct with the other memory layout) or ``all`` (also the eager module as loaded, i.e. before
    :mod:`mrct.runtime`; for the paper-size model it costs as much as the reference, which it
    matches). ``warmup``: time_interleaved's.
    """
    import torch

    from mrct.inference import Translator
    from mrct.io import read_volume
    from mrct.metrics import mr_head_mask, slab_voxels
    from mrct.runtime import FastResnet, torch_threads
    from mrct.volume import Modality

    volume = read_volume(series)
    translators = {p: Translator.from_package(package, "cpu", precision=p) for p in ("fp32", "bf16")}
    auto = Translator.from_package(package, "cpu").precision
    fp32, bf16 = translators["fp32"], translators["bf16"]
    prepared = fp32.prepare(volume, Modality.CT)
    threads = fp32.threads
    module = fp32.package.load_generator("mr_to_ct", "cpu")
    reference = plain_reference(module)
    x = torch.from_numpy(prepared.slabs[0].image)[None, None]

    def call(net: Any, autocast: bool = False) -> Callable[[], Any]:
        def run() -> Any:
            half = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
            with torch.inference_mode(), torch_threads(threads), half:
                return net(x).float().numpy()

        return run

    fast = {p: t.generator("mr_to_ct") for p, t in translators.items()}
    runs: dict[str, Callable[[], Any]] = {
        "mrct fp32": lambda: fp32.run(prepared),
        "mrct bf16": lambda: bf16.run(prepared),
        "reference fp32": call(reference),
        "reference bf16 autocast": call(reference, autocast=True),
    }
    layouts = {
        p: "channels_last_3d" if f.memory_format == torch.channels_last_3d else "contiguous"
        for p, f in fast.items()
    }
    if variants == "all":
        runs["mrct eager module fp32 (before)"] = call(module)
    if variants in ("all", "layouts"):
        for p in ("fp32", "bf16"):
            other = FastResnet(module, p, channels_last=layouts[p] == "contiguous").eval()
            flipped = "contiguous" if layouts[p] == "channels_last_3d" else "channels_last_3d"
            runs[f"mrct {p}, {flipped}"] = call(other)
    times = time_interleaved(runs, repeats, warmup)

    # The same function? The reference against mrct's module; bf16 against fp32 in HU on the
    # input grid, for mrct's bf16 path and for stock autocast on the reference.
    with torch.inference_mode():
        module_out = module(x)
    ref_out = {p: call(reference, autocast=p == "bf16")()[0, 0] for p in ("fp32", "bf16")}
    outputs = {p: t.run(prepared) for p, t in translators.items()}
    slab = prepared.slabs[0].record.slab
    in_slab = slab_voxels(volume, slab.superior_mm, slab.inferior_mm)
    head = mr_head_mask(volume) & in_slab

    def hu_error(fp32_out: np.ndarray, bf16_out: np.ndarray) -> dict[str, float]:
        a, b = (fp32.finish(prepared, [y]).volume.array.astype(np.float32) for y in (fp32_out, bf16_out))
        error = np.abs(a - b)
        return {
            "mae_head": float(error[head].mean()),
            "mae_slab": float(error[in_slab].mean()),
            "p99_head": float(np.percentile(error[head], 99)),
            "max": float(error.max()),
        }

    return {
        "times_s": times,
        "auto_precision": auto,
        "threads": threads,
        "layouts": layouts,
        "parameters": sum(p.numel() for p in module.parameters()),
        "reference_max_abs_difference": float(np.abs(ref_out["fp32"] - module_out[0, 0].numpy()).max()),
        "fast_fp32_max_abs_difference": float(np.abs(outputs["fp32"][0] - module_out[0, 0].numpy()).max()),
        "bf16_vs_fp32_hu": hu_error(outputs["fp32"][0], outputs["bf16"][0]),
        "autocast_bf16_vs_fp32_hu": hu_error(ref_out["fp32"], ref_out["bf16"]),
    }


@contextlib.contextmanager
def _worker_threads(threads: int | None) -> Iterator[None]:
    """Limit torch's and ITK's threads in a worker thread (torch's count is per thread; ITK's
    default is global, but in the pipeline only the worker runs ITK filters)."""
    import SimpleITK as sitk

    from mrct.runtime import torch_threads

    if threads is None:
        yield
        return
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        with torch_threads(threads):
            yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def overlapped_throughput(package: Path, tree: Path, work: Path, worker_threads: int | None) -> float:
    """What a batch built on the stage API reaches: a worker thread reads and prepares series
    n + 1 and finishes and writes series n - 1 while this thread runs the model on series n.
    Returns the wall time for every series under ``tree`` (model loaded beforehand)."""
    from concurrent.futures import ThreadPoolExecutor

    from mrct.inference import Translator
    from mrct.io import read_volume, write_volume
    from mrct.volume import Modality

    translator = Translator.from_package(package, "cpu")
    translator.generator("mr_to_ct")  # loaded once, before the clock (as a batch does)
    series = sorted(p.parent for p in tree.glob("*/t1/*.dcm") if p.name == min(os.listdir(p.parent)))

    def prepare(path: Path) -> Any:
        with _worker_threads(worker_threads):
            return translator.prepare(read_volume(path), Modality.CT)

    def finish(prepared: Any, outputs: Any, n: int) -> None:
        with _worker_threads(worker_threads):
            result = translator.finish(prepared, outputs)
            dst = f"{work / f'overlap{n:02d}'}/"
            write_volume(result.volume, dst, series_description="bench", derivation_description="bench")

    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        ahead, writes = pool.submit(prepare, series[0]), []
        for n in range(len(series)):
            prepared = ahead.result()
            if n + 1 < len(series):
                ahead = pool.submit(prepare, series[n + 1])
            outputs = translator.run(prepared)
            writes.append(pool.submit(finish, prepared, outputs, n))
        for job in writes:
            job.result()
    return time.perf_counter() - start
