"""One command for mrct's speed and memory, against references measured in the same run.

    python benchmarks/run.py [-o benchmarks/results] [--repeats 3] [--quick]
                             [--models bundled,paper] [--data ../shared/data] [--no-train]

Writes ``performance.json`` and ``performance.md`` (a table of targets, measured values and
pass/fail, then the details). Input: the real 256x256x170 Philips MPRAGE series in
``../shared/data`` (the run stops with a message when it is absent). Models: the bundled
``mrct-head-medium`` and the paper-size generator (ngf 64, 9 residual blocks, 30x256x256),
an untrained package built here with mrct's package writer (weights do not change timing).

(a) ``mrct translate`` end to end: a fresh process per run (DICOM in, DICOM out, automatic
    slab), wall time and that process's peak RSS; (c) its ``--report`` splits the time into
    load_model, read, localise, preprocess, forward, invert, write, checksum and other.
(b) The generator alone, as ``translate`` calls it (``Translator.run``), in this process, on
    the same series' model-grid input; (f) against a plain-PyTorch generator of the paper's
    architecture holding the same weights (eager fp32, and bf16 autocast), interleaved.
(d) ``mrct batch`` over 10 copies of the series (new UIDs), series per minute, against the
    model-bound limit 60 / forward time (b); and the same series through the Translator's stage
    API overlapped (a worker thread reads, prepares, finishes and writes while this thread runs
    the model), with the worker limited to 1 thread or not (``--overlap-repeats``, default 1).
(e) One training iteration of ``cpu_small`` on the CPU (``benchmarks/train_workers.py``) and,
    with a GPU, ``paper_3d`` fp32 eager vs bf16 / channels_last_3d / torch.compile.
Every figure is the median of ``--repeats`` runs with min..max. ``--quick`` (development):
1 repeat, no batch or layout variants for the paper-size model, 3 batch series.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import inference_bench as bench
import train as train_bench
from report import markdown

from mrct.script_main import non_negative_int, positive_int, run_main

GB = 1e9
MODELS = ("bundled", "paper")


def model_names(text: str) -> list[str]:
    """argparse ``type=``: comma-separated names out of ``MODELS`` (an unknown one is refused,
    not silently measured as nothing)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(map(repr, unknown)) or '(none given)'}; known: {', '.join(MODELS)}"
        )
    return list(dict.fromkeys(names))


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _model_part(
    name: str, package: Path, series: Path, args: argparse.Namespace, work: Path, tree: Path
) -> dict[str, Any]:
    quick_paper = args.quick and name == "paper"
    part: dict[str, Any] = {"package": str(package)}
    _log(f"{name}: mrct translate end to end x{args.repeats} ...")
    e2e = bench.translate_end_to_end(package, series, work, args.repeats)
    ok = [r for r in e2e["runs"] if r["rc"] == 0]
    if ok:
        e2e["wall"] = stats([r["wall_s"] for r in ok])
        e2e["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in ok)
        stages = ok[0]["timings_s"].keys()
        e2e["stages"] = {k: stats([r["timings_s"][k] for r in ok]) for k in stages}
        _log(f"  {e2e['wall']['median']:.1f} s, peak RSS {e2e['peak_rss_bytes'] / GB:.2f} GB")
    else:
        _log(f"  failed: {e2e['runs'][0].get('error')}")
    part["translate"] = e2e
    _log(f"{name}: generator forward and plain-PyTorch reference x{args.repeats} ...")
    # --quick: the paper-size model's kernels are set up during its single timed run (no warm-up).
    variants = "core" if quick_paper else ("layouts" if name == "paper" else "all")
    fwd = bench.forward_measurements(package, series, args.repeats, variants, warmup=not quick_paper)
    fwd["time"] = {k: stats(v) for k, v in fwd.pop("times_s").items()}
    part["forward"] = fwd
    for k, v in fwd["time"].items():
        _log(f"  {k}: {v['median']:.2f} s")
    if quick_paper or args.no_batch:
        part["batch"] = {"skipped": "--quick (paper-size model)" if quick_paper else "--no-batch"}
        return part
    copies = 3 if args.quick else 10
    if not tree.exists():  # made once, shared by the models
        _log(f"batch: copying the series {copies} times ...")
        bench.make_batch_tree(series, tree, copies)
    _log(f"{name}: mrct batch over {copies} series x{args.repeats} ...")
    batch = bench.batch_throughput(package, tree, work, args.repeats)
    batch["series"] = copies
    ok = [r for r in batch["runs"] if r["rc"] == 0]
    if ok:
        batch["wall"] = stats([r["wall_s"] for r in ok])
        batch["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in ok)
        _log(f"  {batch['wall']['median']:.1f} s for {copies} series")
    else:
        _log(f"  failed: {batch['runs'][0].get('error')}")
    part["batch"] = batch
    if args.overlap_repeats < 1:  # --overlap-repeats 0: no stage-API rows
        return part
    overlap: dict[str, Any] = {"series": copies, "runs": args.overlap_repeats}
    for label, threads in (("worker 1 thread", 1), ("worker all threads", None)):
        _log(f"{name}: stage API overlapped ({label}) over {copies} series x{args.overlap_repeats} ...")
        walls = []
        for n in range(args.overlap_repeats):
            out = work / f"overlap_{threads}_{n}"
            out.mkdir()
            walls.append(bench.overlapped_throughput(package, tree, out, threads))
        overlap[label] = stats(walls)
        _log(f"  {overlap[label]['median']:.1f} s")
    part["overlap"] = overlap
    return part


def _train_part(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    spec = {
        "kind": "iteration",
        "device": "cpu",
        "config": "cpu_small",
        "size": [30, 128, 128],
        "amp": "none",
        "channels_last": False,
        "compile": False,
        "warmup": 1,
        "repeats": args.repeats,
    }
    _log(f"train: cpu_small 30x128x128 on the CPU, 1 warm-up + {args.repeats} iterations ...")
    cpu = train_bench.run_worker(spec)
    if "times_s" in cpu:
        cpu["time"] = stats(cpu["times_s"])
    part: dict[str, Any] = {"cpu_small": {**spec, **cpu}}
    if torch.cuda.is_available():
        gpu = train_bench.gpu_part(args.gpu_repeats, _log)
        for row in gpu["rows"]:
            if "time" in row:
                row["time"] = {
                    "median": row["time"]["median_s"],
                    "min": row["time"]["min_s"],
                    "max": row["time"]["max_s"],
                    "runs": row["time"]["runs"],
                }
        part["gpu"] = gpu
    else:
        part["gpu"] = {"skipped": "no CUDA device on this machine (torch.cuda.is_available() is False)"}
    return part


def failures(result: dict[str, Any]) -> list[str]:
    """``what: error`` of every measurement that failed (its row in the report says "failed")."""
    found = []
    train = result.get("train", {})
    if "error" in train.get("cpu_small", {}):
        found.append(f"train cpu_small: {train['cpu_small']['error']}")
    found += train_bench.failures({"gpu": train.get("gpu", {})})
    for name, part in result["models"].items():
        for what in ("translate", "batch"):
            for run in part.get(what, {}).get("runs", []):
                if run.get("rc", 0) != 0:
                    found.append(f"{name} {what}: exit {run['rc']}: {run.get('error')}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).resolve().parent
    parser.add_argument("-o", "--output", type=Path, default=here / "results")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per figure (median, min..max)")
    parser.add_argument("--gpu-repeats", type=positive_int, default=20, help="timed GPU training iterations")
    parser.add_argument("--quick", action="store_true", help="development: 1 repeat, fewer variants")
    parser.add_argument(
        "--models",
        type=model_names,
        default=list(MODELS),
        help="bundled, paper or both (comma-separated; default both)",
    )
    parser.add_argument("--data", type=Path, default=here.parents[1] / "shared" / "data")
    parser.add_argument("--no-train", action="store_true", help="skip the training rows")
    parser.add_argument("--no-batch", action="store_true", help="skip the batch rows")
    parser.add_argument(
        "--overlap-repeats",
        type=non_negative_int,
        default=1,
        help="runs of each stage-API overlap variant (slow; 0: none)",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    series = args.data / bench.SERIES
    if not series.is_dir():
        sys.exit(f"skipped: {series} is absent; the benchmark needs the real MR series in ../shared/data")

    started, load_before = time.perf_counter(), os.getloadavg()
    result: dict[str, Any] = {
        "benchmark": "performance",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "repeats": args.repeats,
        "series": bench.SERIES,
        "machine": train_bench.machine_info(),
        "models": {},
    }
    from mrct.runtime import cpu_has_native_bf16, physical_cores

    result["machine"].update(native_bf16=cpu_has_native_bf16(), physical_cores=physical_cores())
    # Training first: its workers report their peak RSS minus the peak they inherit from this
    # process (see inference_bench.run_cli), which is smallest before any model is loaded here.
    result["train"] = {"skipped": "--no-train"} if args.no_train else _train_part(args)
    with tempfile.TemporaryDirectory(prefix="mrct-bench-") as tmp:
        work = Path(tmp)
        _log(f"start-up: mrct --help and import torch, monai, fresh processes x{max(3, args.repeats)} ...")
        result["startup"] = {k: stats(v) for k, v in bench.startup(work, max(3, args.repeats)).items()}
        packages = {"bundled": bench.ROOT / "models" / bench.BUNDLED}
        if "paper" in args.models:
            packages["paper"] = bench.build_paper_package(work)
        for name, package in packages.items():
            if name in args.models:
                folder = work / name
                folder.mkdir()
                result["models"][name] = _model_part(name, package, series, args, folder, work / "batch_in")
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    result["wall_s"] = time.perf_counter() - started
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "performance.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.output / "performance.md").write_text(text)
    print(text)
    # The report is written either way; a failed measurement must still fail the command.
    if failed := failures(result):
        print(f"error: {len(failed)} measurement(s) failed; first, {failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
