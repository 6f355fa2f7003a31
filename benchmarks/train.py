"""Time one training iteration of the 3D CycleGAN and measure its peak memory.

    python benchmarks/train.py [--device auto|cpu|cuda] [--repeats 3] [--gpu-repeats 20]
                               [-o benchmarks/results]

Writes ``train.json`` and ``train.md``. One iteration is ``Trainer.step``: both generators
forward (F(x), G(y), G(F(x)), F(G(y))) and backward, the generators' Adam step, both
discriminators on real and pooled translations, their backward and Adam step. The data
loader is not measured: each step gets the same random (1, 1, D, H, W) MR and CT tensors in
[-1, 1], so no prepared set is needed. Every configuration runs in a fresh process
(``train_workers.py``), so peak memory is its own: one warm-up iteration, then ``--repeats``
timed ones (one for the expensive CPU rows); figures are the median with min..max.

CPU (always, unless ``--device cuda``):

* ``cpu_small`` at its 30x128x128 training patch and at the whole 30x256x256 grid, fp32.
* ``paper_3d``'s networks (ngf 64, 9 residual blocks, ndf 64) at sizes a 2-core CPU can run:
  30x32x32, 30x64x64 and 30x96x96 in fp32, 30x32x32 and 30x64x64 under bf16 autocast.
  Memory is the rise of the process's peak RSS (``ru_maxrss``) from just before the trainer
  is built to after the last iteration: weights, gradients, Adam moments, activations, the
  image history and allocator slack. The whole-grid cpu_small row and the rows there only
  for the memory fit time one iteration, to bound the run time (about 20 minutes on 2 cores
  shared with another job).
* Peak memory of ``paper_3d`` at 30x256x256, batch 1, *extrapolated*: activations grow
  linearly with voxels, so a least-squares line peak = a + b * voxels through the fp32
  (and bf16) rows is evaluated at 30 * 256 * 256 voxels. The exact weight + gradient + Adam
  memory of the four networks is printed beside it (it should be most of ``a``).
* Reference, same run, same size (30x64x64): a plain-PyTorch generator of the paper's
  architecture (nn.ReflectionPad3d / nn.Conv3d / nn.InstanceNorm3d / nn.ConvTranspose3d
  written out, CycleGAN's ``ResnetGenerator`` in 3D) against mrct's MONAI-built
  ``ResnetGenerator``, forward + backward of each, interleaved in one process.
  ``generator ratio`` = mrct / plain (the cost of MONAI blocks and mrct's padding, ideally 1).
  ``iteration ratio`` = mrct iteration / (4 x plain generator forward + backward): an
  iteration runs four generator passes, so 4x is the generators' share and the excess is
  the discriminators (6 forward passes, 2 backward), two Adam steps and the history pool.
  The generator ratio is interleaved in one process; the iteration ratio compares two
  processes run one after the other, so other load on the machine moves it more.

GPU (when ``torch.cuda.is_available()``; ``--device cuda`` requires one): ``paper_3d`` at
30x256x256, batch 1: fp32 eager (PyTorch's default conv precision), bf16 autocast, bf16 +
channels_last_3d (the config as shipped), and that + ``torch.compile``; iterations/s,
``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, and each row's speed against
fp32 eager. The plain-PyTorch reference generator runs there at 30x256x256 too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from train_report import FULL, GB, REFERENCE_SIZE, size_text, train_markdown
from train_workers import CONFIGS, run_worker  # benchmarks/ is on sys.path: run as a script

from mrct.script_main import positive_int, run_main

PAPER = "paper_3d"  # the config whose rows feed the memory fit and the iteration ratio

# CPU configurations: (label, config, size, amp, timed iterations). "repeats" rows run
# --repeats timed iterations; the rest, expensive or there for the memory fit, run one
# (about 1.5 min each on 2 cores). Every PAPER row feeds the memory fit of its precision.
CPU_ROWS: list[tuple[str, str, tuple[int, int, int], str, str]] = [
    ("cpu_small", "cpu_small", (30, 128, 128), "none", "repeats"),
    ("cpu_small", "cpu_small", FULL, "none", "once"),
    ("paper_3d networks", PAPER, (30, 32, 32), "none", "once"),
    ("paper_3d networks", PAPER, REFERENCE_SIZE, "none", "repeats"),
    ("paper_3d networks", PAPER, (30, 96, 96), "none", "once"),
    ("paper_3d networks", PAPER, (30, 32, 32), "bf16", "once"),
    ("paper_3d networks", PAPER, REFERENCE_SIZE, "bf16", "repeats"),
]

# GPU configurations of paper_3d at FULL: (label, amp, channels_last, compile, warm-up iterations).
GPU_ROWS: list[tuple[str, str, bool, bool, int]] = [
    ("fp32 eager", "none", False, False, 1),
    ("bf16 autocast", "bf16", False, False, 1),
    ("bf16 + channels_last_3d (paper_3d.yaml)", "bf16", True, False, 1),
    ("bf16 + channels_last_3d + torch.compile", "bf16", True, True, 3),
]


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "runs": len(values),
    }


def _parameter_memory() -> dict[str, Any]:
    """Exact fp32 weights + gradients + two Adam moments of paper_3d's four networks."""
    import torch

    from mrct.cyclegan import Discriminators, Generators
    from mrct.training.config import load_train_config

    model = load_train_config(CONFIGS / "paper_3d.yaml").model
    with torch.device("meta"):  # shapes only, no memory, no time
        gens, discs = Generators(model), Discriminators(model)
    n_gen = sum(p.numel() for p in gens.mr_to_ct.parameters())
    n_disc = sum(p.numel() for p in discs.d_ct.parameters())
    total = sum(p.numel() for p in gens.parameters()) + sum(p.numel() for p in discs.parameters())
    return {
        "parameters_per_generator": n_gen,
        "parameters_per_discriminator": n_disc,
        "parameters_total": total,
        "bytes": total * 4 * 4,  # fp32 x (weight, gradient, Adam exp_avg, exp_avg_sq)
    }


def _fit(points: list[tuple[list[int], float]]) -> dict[str, Any] | None:
    """Least-squares line peak_bytes = a + b * voxels through (size, peak) points, evaluated at FULL."""
    if len(points) < 2:
        return None
    import numpy as np

    v = np.array([math.prod(p[0]) for p in points], float)
    m = np.array([p[1] for p in points], float)
    b, a = np.polyfit(v, m, 1)
    residual = float(np.max(np.abs(a + b * v - m) / m))
    full = math.prod(FULL)
    return {
        "points": [{"size": size, "voxels": math.prod(size), "peak_bytes": y} for size, y in points],
        "intercept_bytes": float(a),
        "bytes_per_voxel": float(b),
        "max_relative_residual": residual,
        "predicted_full_bytes": float(a + b * full),
    }


def _cpu_part(repeats: int, log: Any) -> dict[str, Any]:
    rows = []
    for label, config, size, amp, timed in CPU_ROWS:
        spec = {
            "kind": "iteration",
            "device": "cpu",
            "config": config,
            "size": list(size),
            "amp": amp,
            "channels_last": False,  # channels_last_3d is a GPU layout; on CPU it only reorders
            "compile": False,
            "warmup": 1,
            "repeats": repeats if timed == "repeats" else 1,
        }
        log(f"cpu: {label} {size_text(size)} {'fp32' if amp == 'none' else amp} ...")
        out = run_worker(spec)
        row = {"label": label, "config": config, "size": list(size), "amp": amp, **out}
        if "times_s" in out:
            row["time"] = _stats(out["times_s"])
            log(
                f"  {row['time']['median_s']:.1f} s/iteration, "
                f"peak RSS +{out['peak_rss_increase_bytes'] / GB:.2f} GB"
            )
        else:
            log(f"  failed: {out['error']}")
        rows.append(row)
    log(f"cpu: reference generators {size_text(REFERENCE_SIZE)} ...")
    ref = run_worker({"kind": "generator", "device": "cpu", "size": list(REFERENCE_SIZE), "repeats": repeats})
    part: dict[str, Any] = {"rows": rows, "reference": ref}
    if "times_s" in ref:
        ref["time"] = {k: _stats(v) for k, v in ref["times_s"].items()}
        plain = ref["time"]["plain"]["median_s"]
        ratios = {"generator_mrct_to_plain": ref["time"]["mrct"]["median_s"] / plain}
        same = [
            r
            for r in rows
            if r["config"] == PAPER and tuple(r["size"]) == REFERENCE_SIZE and r["amp"] == "none"
        ]
        if same and "time" in same[0]:
            ratios["iteration_to_4_plain_generators"] = same[0]["time"]["median_s"] / (4 * plain)
        part["ratios"] = ratios
    return part


def _memory_estimate(cpu: dict[str, Any]) -> dict[str, Any]:
    params = _parameter_memory()
    fits: dict[str, Any] = {}
    for amp in ("none", "bf16"):
        points = [
            (r["size"], float(r["peak_rss_increase_bytes"]))
            for r in cpu["rows"]
            if r["config"] == PAPER and r["amp"] == amp and "peak_rss_increase_bytes" in r
        ]
        fits["fp32" if amp == "none" else "bf16"] = _fit(points)
    fp32 = fits["fp32"]
    if fp32 is not None:
        # Cross-check for bf16: keep the fp32 intercept, halve the per-voxel (activation) slope.
        fits["bf16_halved_activations_bytes"] = fp32["intercept_bytes"] + fp32[
            "bytes_per_voxel"
        ] / 2 * math.prod(FULL)
    return {"size": list(FULL), "batch": 1, "parameters": params, "fits": fits}


def gpu_part(repeats: int, log: Any) -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    rows = []
    for label, amp, channels_last, compiled, warmup in GPU_ROWS:
        spec = {
            "kind": "iteration",
            "device": "cuda",
            "config": "paper_3d",
            "size": list(FULL),
            "amp": amp,
            "channels_last": channels_last,
            "compile": compiled,
            "warmup": warmup,
            "repeats": repeats,
        }
        log(f"gpu: paper_3d {size_text(FULL)} {label} ...")
        out = run_worker(spec)
        row = {"label": label, "amp": amp, "channels_last": channels_last, "compile": compiled, **out}
        if "times_s" in out:
            row["time"] = _stats(out["times_s"])
            log(
                f"  {1 / row['time']['median_s']:.2f} it/s, "
                f"max allocated {out['max_allocated_bytes'] / GB:.1f} GB"
            )
        else:
            log(f"  failed: {out['error']}")
        rows.append(row)
    base = rows[0].get("time")
    for row in rows:
        if base and "time" in row:
            row["speed_vs_fp32_eager"] = base["median_s"] / row["time"]["median_s"]
    log(f"gpu: reference generators {size_text(FULL)} ...")
    ref = run_worker({"kind": "generator", "device": "cuda", "size": list(FULL), "repeats": repeats})
    part: dict[str, Any] = {
        "device": props.name,
        "memory_bytes": props.total_memory,
        "cudnn_allow_tf32": getattr(torch.backends.cudnn, "allow_tf32", None),
        "rows": rows,
        "reference": ref,
    }
    if "times_s" in ref:
        ref["time"] = {k: _stats(v) for k, v in ref["times_s"].items()}
        plain = ref["time"]["plain"]["median_s"]
        part["ratios"] = {"generator_mrct_to_plain": ref["time"]["mrct"]["median_s"] / plain}
        if base:
            part["ratios"]["fp32_iteration_to_4_plain_generators"] = base["median_s"] / (4 * plain)
    return part


def machine_info() -> dict[str, Any]:
    import torch

    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# ----------------------------------------------------------------------------- report


def failures(result: dict[str, Any]) -> list[str]:
    """``what: error`` of every configuration that failed (its row in the table says "failed")."""
    found = []
    for part in ("cpu", "gpu"):
        section = result.get(part, {})
        for row in section.get("rows", []):
            if "error" in row:
                size = f" {size_text(row['size'])}" if "size" in row else ""  # GPU rows: all at FULL
                found.append(f"{part} {row['label']}{size}: {row['error']}")
        if "error" in section.get("reference", {}):
            found.append(f"{part} reference generators: {section['reference']['error']}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CPU rows, plus GPU rows when CUDA is available; cpu: CPU only; cuda: GPU only",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed iterations per CPU configuration"
    )
    parser.add_argument(
        "--gpu-repeats", type=positive_int, default=20, help="timed iterations per GPU configuration"
    )
    parser.add_argument(
        "-o",
        "--out",
        "--output",
        dest="output",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
    )
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device is available")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "benchmark": "train",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "repeats": {"cpu": args.repeats, "gpu": args.gpu_repeats},
    }
    if args.device in ("auto", "cpu"):
        result["cpu"] = _cpu_part(args.repeats, log)
        result["memory_estimate"] = _memory_estimate(result["cpu"])
    if args.device == "cpu":
        result["gpu"] = {"skipped": "--device cpu"}
    elif torch.cuda.is_available():
        result["gpu"] = gpu_part(args.gpu_repeats, log)
    else:
        result["gpu"] = {"skipped": "no CUDA device on this machine (torch.cuda.is_available() is False)"}
        log("gpu: skipped, no CUDA device on this machine")
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    result["wall_s"] = time.perf_counter() - t_start

    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    text = train_markdown(result)
    (args.output / "train.md").write_text(text)
    print(text)
    # The table is written either way; a failed row must still fail the command (CI, scripts).
    if failed := failures(result):
        print(f"error: {len(failed)} configuration(s) failed; first, {failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
