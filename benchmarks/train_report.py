"""The training benchmark's sizes and units, and its Markdown report (``train.md``), split from
``benchmarks/train.py``, which measures."""

from __future__ import annotations

from typing import Any

FULL = (30, 256, 256)  # the paper's model grid (D, H, W)
GB = 1e9  # memory is reported in GB (10^9 bytes), the unit of "an 80 GB GPU"
GPU_LIMIT_GB = 80.0
REFERENCE_SIZE = (30, 64, 64)


def size_text(size: Any) -> str:
    return "×".join(str(n) for n in size)


# ----------------------------------------------------------------------------- worker side


def _cell(t: dict[str, float]) -> str:
    if t["runs"] == 1:
        return f"{t['median_s']:.2f} (1 run)"
    return f"{t['median_s']:.2f} ({t['min_s']:.2f}–{t['max_s']:.2f})"


def train_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    load = result["load_average"]
    lines = [
        "# One training iteration of the 3D CycleGAN (`Trainer.step`)",
        "",
        f"{result['date']}. {m['cpu_model']}, {m['cpus']} CPUs ({m['torch_threads']} torch threads), "
        f"torch {m['torch']}, Python {m['python']}; GPU: {m['cuda'] or 'none'}. "
        f"Load average before/after: {load['before'][0]:.2f} / {load['after'][0]:.2f}. "
        f"Benchmark wall time {result['wall_s'] / 60:.1f} min.",
        "",
        "One iteration = both generators forward and backward, both discriminators, two Adam "
        "steps. Inputs are random tensors fed to `Trainer.step`; the data loader is not measured. "
        "Each configuration runs in a fresh process: 1 warm-up iteration, then timed ones; "
        "median (min–max). Memory in GB (10^9 bytes).",
    ]
    cpu = result.get("cpu")
    if cpu:
        lines += [
            "",
            "## CPU",
            "",
            "| configuration | D×H×W | precision | s/iteration, median (min–max) | iterations/s | "
            "peak RSS increase (GB) |",
            "|---|---|---|---|---|---|",
        ]
        for r in cpu["rows"]:
            prec = "fp32" if r["amp"] == "none" else "bf16 autocast"
            if "time" not in r:
                lines.append(f"| {r['label']} | {size_text(r['size'])} | {prec} | failed: {r['error']} | | |")
                continue
            t = r["time"]
            lines.append(
                f"| {r['label']} | {size_text(r['size'])} | {prec} | {_cell(t)} | {1 / t['median_s']:.3f} "
                f"| {r['peak_rss_increase_bytes'] / GB:.2f} |"
            )
        ref = cpu["reference"]
        if "time" in ref:
            for k, name in (
                ("plain", "reference: plain-PyTorch generator"),
                ("mrct", "mrct ResnetGenerator"),
            ):
                lines.append(
                    f"| {name}, forward + backward | {size_text(REFERENCE_SIZE)} | fp32 "
                    f"| {_cell(ref['time'][k])} | {1 / ref['time'][k]['median_s']:.3f} | |"
                )
            ratios = cpu["ratios"]
            lines += [
                "",
                "paper_3d networks: ngf 64, 9 residual blocks, ndf 64 "
                f"({ref['parameters'] / 1e6:.1f} M parameters per generator). "
                "Rows with 1 run (the whole grid, the memory-fit points) are timed once after the "
                "warm-up, to bound the run time on a small CPU.",
                "",
                "- generator ratio, mrct / plain PyTorch, forward + backward at "
                f"{size_text(REFERENCE_SIZE)}: "
                f"**{ratios['generator_mrct_to_plain']:.2f}×** "
                "(MONAI blocks and mrct's padding; 1 = no overhead).",
            ]
            if "iteration_to_4_plain_generators" in ratios:
                lines.append(
                    f"- iteration ratio, mrct iteration / (4 × plain generator forward + backward) at "
                    f"{size_text(REFERENCE_SIZE)}: **{ratios['iteration_to_4_plain_generators']:.2f}×**. "
                    "An iteration makes four generator passes (F(x), G(y), G(F(x)), F(G(y))); the excess "
                    "over 1 is the discriminators (6 forward passes, 2 backward), two Adam steps over all "
                    "four networks and the history pool. (Two processes run one after the other: "
                    "load from other jobs moves this ratio more than the generator ratio, which is "
                    "interleaved in one process.)"
                )
        else:
            lines.append(f"\nReference failed: {ref.get('error')}")
    mem = result.get("memory_estimate")
    if mem:
        p = mem["parameters"]
        fits = mem["fits"]
        lines += [
            "",
            f"## Memory of paper_3d at {size_text(FULL)}, batch 1 — extrapolated from the CPU rows above",
            "",
            "| | fp32 | bf16 autocast |",
            "|---|---|---|",
            f"| weights + gradients + Adam moments, exact ({p['parameters_total'] / 1e6:.1f} M parameters: "
            f"2 × {p['parameters_per_generator'] / 1e6:.2f} M generators, 2 × "
            f"{p['parameters_per_discriminator'] / 1e6:.2f} M discriminators; × 4 B × 4) "
            f"| {p['bytes'] / GB:.2f} | {p['bytes'] / GB:.2f} (fp32 master weights) |",
        ]
        f32, b16 = fits.get("fp32"), fits.get("bf16")

        def col(f: dict[str, Any] | None, key: str, scale: float, fmt: str) -> str:
            return "n/a" if f is None else format(f[key] / scale, fmt)

        def pts(f: dict[str, Any] | None) -> str:
            if f is None:
                return "n/a"
            return ", ".join(size_text(q["size"]) for q in f["points"])

        lines += [
            f"| fit points (peak RSS increase vs voxels) | {pts(f32)} | {pts(b16)} |",
            f"| intercept a (GB) | {col(f32, 'intercept_bytes', GB, '.2f')} | "
            f"{col(b16, 'intercept_bytes', GB, '.2f')} |",
            f"| slope b (kB per input voxel) | {col(f32, 'bytes_per_voxel', 1e3, '.1f')} | "
            f"{col(b16, 'bytes_per_voxel', 1e3, '.1f')} |",
            f"| largest relative residual of the fit | {col(f32, 'max_relative_residual', 0.01, '.1f')} % | "
            f"{col(b16, 'max_relative_residual', 0.01, '.1f')} % |",
            f"| **predicted peak at {size_text(FULL)} (GB)** "
            f"| **{col(f32, 'predicted_full_bytes', GB, '.1f')}** "
            f"| **{col(b16, 'predicted_full_bytes', GB, '.1f')}** |",
        ]
        if "bf16_halved_activations_bytes" in fits:
            lines.append(
                "| cross-check: fp32 intercept + half the fp32 slope (GB) | | "
                f"{fits['bf16_halved_activations_bytes'] / GB:.1f} |"
            )
        if f32 is not None:
            worst = max(f32["predicted_full_bytes"], (b16 or f32)["predicted_full_bytes"])
            verdict = "fits" if worst < GPU_LIMIT_GB * GB else "does NOT fit"
            lines += [
                "",
                f"An extrapolation from CPU peak RSS, not a GPU measurement: paper_3d at {size_text(FULL)}, "
                f"batch 1, {verdict} a single 80 GB GPU (fp32 needs about "
                f"{f32['predicted_full_bytes'] / GB:.0f} GB). A GPU adds its CUDA context (~0.5 GB), "
                "cuDNN workspaces and caching-allocator slack; the GPU section, when present, measures it.",
            ]
    gpu = result.get("gpu")
    lines += ["", "## GPU", ""]
    if not gpu or "skipped" in gpu:
        lines.append(f"Skipped: {gpu['skipped'] if gpu else 'not requested'}.")
    else:
        lines += [
            f"{gpu['device']} ({gpu['memory_bytes'] / GB:.0f} GB), paper_3d at {size_text(FULL)}, batch 1. "
            "fp32 eager uses PyTorch's default conv precision "
            f"(cudnn.allow_tf32 = {gpu['cudnn_allow_tf32']}).",
            "",
            "| configuration | s/iteration, median (min–max) | iterations/s | vs fp32 eager "
            "| max allocated (GB) | max reserved (GB) | fits 80 GB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in gpu["rows"]:
            if "time" not in r:
                lines.append(f"| {r['label']} | failed: {r['error']} | | | | | |")
                continue
            t = r["time"]
            speed = r.get("speed_vs_fp32_eager")
            fits_80 = "yes" if r["max_reserved_bytes"] < GPU_LIMIT_GB * GB else "no"
            lines.append(
                f"| {r['label']} | {_cell(t)} | {1 / t['median_s']:.2f} | "
                f"{'' if speed is None else f'{speed:.2f}×'} | {r['max_allocated_bytes'] / GB:.1f} | "
                f"{r['max_reserved_bytes'] / GB:.1f} | {fits_80} |"
            )
        ref = gpu["reference"]
        if "time" in ref:
            lines.append(
                "| reference: plain-PyTorch generator, forward + backward, fp32 "
                f"| {_cell(ref['time']['plain'])} "
                f"| {1 / ref['time']['plain']['median_s']:.2f} | | | | |"
            )
            lines.append("")
            for key, text in (
                ("generator_mrct_to_plain", "generator ratio, mrct / plain PyTorch"),
                ("fp32_iteration_to_4_plain_generators", "fp32 iteration / (4 × plain generator)"),
            ):
                if key in gpu.get("ratios", {}):
                    lines.append(f"- {text}: **{gpu['ratios'][key]:.2f}×**")
    return "\n".join(lines) + "\n"
