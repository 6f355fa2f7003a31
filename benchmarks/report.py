"""The markdown report of ``benchmarks/run.py``: targets with pass/fail first, then the details."""

from __future__ import annotations

from typing import Any

GB = 1e9
STAGES = ("load_model", "read", "localise", "preprocess", "forward", "invert", "write", "checksum", "other")
LABELS = {
    "bundled": "bundled mrct-head-medium (ngf 16, 6 blocks)",
    "paper": "paper-size (ngf 64, 9 blocks)",
}


def _cell(t: dict[str, float], unit: str = "s", digits: int = 2) -> str:
    if t["runs"] == 1:
        return f"{t['median']:.{digits}f} {unit} (1 run)"
    return f"{t['median']:.{digits}f} {unit} ({t['min']:.{digits}f}–{t['max']:.{digits}f})"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**pass**" if ok else "**FAIL**")


def _auto_forward(fwd: dict[str, Any]) -> dict[str, float]:
    return fwd["time"][f"mrct {fwd['auto_precision']}"]


def _targets(result: dict[str, Any]) -> list[str]:
    rows = ["| target | model | measured | limit | result |", "|---|---|---|---|---|"]
    models = result["models"]
    for name, part in models.items():
        fwd, e2e = part["forward"], part["translate"]
        f = _auto_forward(fwd)["median"]
        if "wall" in e2e:
            limit = 1.2 * f + 2.0
            rows.append(
                f"| translate end to end ≤ 1.2 × forward + 2 s | {name} | {e2e['wall']['median']:.1f} s "
                f"(forward {f:.1f} s, {fwd['auto_precision']}) | {limit:.1f} s | "
                f"{_verdict(e2e['wall']['median'] <= limit)} |"
            )
    for name, part in models.items():
        batch, f = part["batch"], _auto_forward(part["forward"])["median"]
        if "wall" in batch:
            ratio = batch["series"] * f / batch["wall"]["median"]
            rows.append(
                f"| batch throughput ≥ 0.85 × model-bound | {name} | {ratio:.2f} × "
                f"({60 * batch['series'] / batch['wall']['median']:.1f} vs {60 / f:.1f} series/min) "
                f"| 0.85 × | {_verdict(ratio >= 0.85)} |"
            )
    paper = models.get("paper", {}).get("translate", {})
    if "peak_rss_bytes" in paper:
        rss = paper["peak_rss_bytes"] / GB
        verdict = _verdict(rss <= 4)
        rows.append(
            f"| peak RSS of a paper-size translate ≤ 4 GB | paper | {rss:.2f} GB | 4 GB | {verdict} |"
        )
    for name, part in models.items():
        t = part["forward"]["time"]
        ref = t["reference fp32"]["median"]
        r32, r16 = t["mrct fp32"]["median"] / ref, t["mrct bf16"]["median"] / ref
        r16a = t["mrct bf16"]["median"] / t["reference bf16 autocast"]["median"]
        rows += [
            f"| generator forward fp32 ≤ 1.0 × plain PyTorch fp32 | {name} | {r32:.2f} × | 1.0 × | "
            f"{_verdict(r32 <= 1.0)} |",
            f"| generator forward bf16 faster than plain PyTorch (fp32; bf16 autocast) | {name} | "
            f"{r16:.2f} ×; {r16a:.2f} × | < 1.0 × | {_verdict(r16 < 1.0 and r16a < 1.0)} |",
        ]
    for name, part in models.items():
        hu, stock = part["forward"]["bf16_vs_fp32_hu"], part["forward"].get("autocast_bf16_vs_fp32_hu")
        untrained = name == "paper"  # random weights: no image to be accurate about; reported only
        extra = f"; autocast on the reference: {stock['mae_head']:.2f} HU" if stock else ""
        rows.append(
            f"| bf16 vs fp32: MAE in the head < 5 HU{' (untrained weights: for information)' * untrained} "
            f"| {name} | {hu['mae_head']:.2f} HU (slab {hu['mae_slab']:.2f}, "
            f"p99 {hu['p99_head']:.0f}{extra}) "
            f"| 5 HU | {'info' if untrained else _verdict(hu['mae_head'] < 5)} |"
        )
    if "startup" in result:
        help_s = result["startup"]["mrct --help"]["median"]
        rows.append(f"| `mrct --help` < 0.5 s | – | {help_s:.2f} s | 0.5 s | {_verdict(help_s < 0.5)} |")
    train = result.get("train", {})
    gpu = train if "skipped" in train else train.get("gpu", {})
    best = None
    for row in gpu.get("rows", []):
        if row.get("compile") and "speed_vs_fp32_eager" in row:
            best = row["speed_vs_fp32_eager"]
    measured = "skipped: " + gpu["skipped"] if "skipped" in gpu else (f"{best:.2f} ×" if best else "failed")
    rows.append(
        f"| GPU training: bf16 + channels_last_3d + compile ≥ 2 × fp32 eager | paper_3d | {measured} | 2 × "
        f"| {_verdict(None if best is None else best >= 2)} |"
    )
    return rows


def _details(result: dict[str, Any]) -> list[str]:
    lines = ["", "## Translate end to end (`mrct translate`, a fresh process)", ""]
    lines += ["| model | precision | wall, median (min–max) | peak RSS |", "|---|---|---|---|"]
    for name, part in result["models"].items():
        e2e = part["translate"]
        if "wall" not in e2e:
            lines.append(f"| {LABELS[name]} | | failed: {e2e['runs'][0].get('error')} | |")
            continue
        lines.append(
            f"| {LABELS[name]} | {e2e['runs'][0].get('precision')} | {_cell(e2e['wall'])} | "
            f"{e2e['peak_rss_bytes'] / GB:.2f} GB |"
        )
    if "startup" in result:
        floor = result["startup"]["python -c 'import torch, monai'"]
        lines += [
            "",
            f"Start-up floor (a fresh `python -c 'import torch, monai'`): {_cell(floor)}. Every translate "
            "pays it before its first voxel (the generator and the preprocessing chain are built on "
            "torch and MONAI); it is part of `load_model` below.",
        ]
    lines += ["", "Where the time goes (the run report's `timings_s`, median seconds; % of total):", ""]
    names = [n for n, p in result["models"].items() if "stages" in p["translate"]]
    lines += ["| stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for stage in (*STAGES, "total"):
        cells = []
        for n in names:
            st = result["models"][n]["translate"]["stages"]
            if stage not in st:
                cells.append("")
                continue
            share = st[stage]["median"] / st["total"]["median"] * 100
            cells.append(f"{st[stage]['median']:.2f} ({share:.0f} %)")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", "## Generator forward alone (same input, same process; `Translator.run`)", ""]
    lines += ["| model | variant | median (min–max) | vs plain PyTorch fp32 |", "|---|---|---|---|"]
    for name, part in result["models"].items():
        t = part["forward"]["time"]
        ref = t["reference fp32"]["median"]
        for variant, v in t.items():
            lines.append(f"| {name} | {variant} | {_cell(v)} | {v['median'] / ref:.2f} × |")
    for name, part in result["models"].items():
        f = part["forward"]
        lines.append(
            f"\n{name}: {f['parameters'] / 1e6:.2f} M parameters; `auto` picks {f['auto_precision']}; "
            f"{f['threads']} threads; layouts {f['layouts']}; reference vs mrct's module max |Δ| "
            f"{f['reference_max_abs_difference']:.1e}, mrct fp32 path vs module "
            f"{f['fast_fp32_max_abs_difference']:.1e} (on the [-1, 1] scale)."
        )
    lines += ["", "## `mrct batch` (a fresh process; model load included)", ""]
    lines += ["| model | series | wall | series/min | model-bound series/min | ratio | peak RSS |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for name, part in result["models"].items():
        b, f = part["batch"], _auto_forward(part["forward"])["median"]
        if "wall" not in b:
            why = b.get("skipped") or b["runs"][0].get("error")
            lines.append(f"| {name} | | skipped or failed: {why} | | | | |")
            continue
        rate, bound = 60 * b["series"] / b["wall"]["median"], 60 / f
        lines.append(
            f"| {name} | {b['series']} | {_cell(b['wall'], digits=1)} | {rate:.1f} | {bound:.1f} | "
            f"{rate / bound:.2f} × | {b['peak_rss_bytes'] / GB:.2f} GB |"
        )
    if not any(part.get("overlap") for part in result["models"].values()):
        return lines + _train_lines(result.get("train", {}))
    lines += [
        "",
        "The same series through the stage API, overlapped (`benchmarks/inference_bench.py`: "
        "a worker thread reads + prepares series n+1 and finishes + writes n-1 while the model runs "
        "on n; model loaded beforehand):",
        "",
    ]
    lines += [
        "| model | series | worker threads | wall | series/min | ratio to model-bound |",
        "|---|---|---|---|---|---|",
    ]
    for name, part in result["models"].items():
        ov, f = part.get("overlap"), _auto_forward(part["forward"])["median"]
        if not ov:
            continue
        for label in ("worker 1 thread", "worker all threads"):
            w = ov[label]
            lines.append(
                f"| {name} | {ov['series']} | {label.removeprefix('worker ')} | {_cell(w, digits=1)} | "
                f"{60 * ov['series'] / w['median']:.1f} | {ov['series'] * f / w['median']:.2f} × |"
            )
    lines += _train_lines(result.get("train", {}))
    return lines


def _train_lines(train: dict[str, Any]) -> list[str]:
    lines = ["", "## Training (`Trainer.step`, benchmarks/train.py's worker)", ""]
    if "skipped" in train:
        return [*lines, f"Skipped: {train['skipped']}."]
    cpu = train["cpu_small"]
    if "time" in cpu:
        t = cpu["time"]
        lines.append(
            f"- cpu_small, 30×128×128, fp32, CPU: {_cell(t)} per iteration = "
            f"{1 / t['median']:.3f} iterations/s; "
            f"peak RSS increase {cpu['peak_rss_increase_bytes'] / GB:.2f} GB."
        )
    else:
        lines.append(f"- cpu_small on the CPU failed: {cpu.get('error')}")
    gpu = train["gpu"]
    if "skipped" in gpu:
        lines.append(
            f"- GPU rows (paper_3d 30×256×256: fp32 eager, bf16, bf16 + channels_last_3d, + torch.compile): "
            f"skipped, {gpu['skipped']}."
        )
        return lines
    lines += ["", f"{gpu['device']}, paper_3d at 30×256×256, batch 1:", ""]
    lines += [
        "| configuration | s/iteration | iterations/s | vs fp32 eager | max allocated |",
        "|---|---|---|---|---|",
    ]
    for row in gpu["rows"]:
        if "time" not in row:
            lines.append(f"| {row['label']} | failed: {row.get('error')} | | | |")
            continue
        speed = row.get("speed_vs_fp32_eager")
        lines.append(
            f"| {row['label']} | {_cell(row['time'], digits=3)} | {1 / row['time']['median']:.2f} | "
            f"{'' if speed is None else f'{speed:.2f} ×'} | {row['max_allocated_bytes'] / GB:.1f} GB |"
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    m, load = result["machine"], result["load_average"]
    head = [
        "# mrct performance"
        + (" (quick run: 1 repeat, fewer variants; a placeholder)" if result["quick"] else ""),
        "",
        f"{result['date']}. {m['cpu_model']}, {m['cpus']} CPUs ({m['physical_cores']} physical cores, "
        f"native bf16: {m['native_bf16']}), torch {m['torch']}, Python {m['python']}; "
        f"GPU: {m['cuda'] or 'none'}. "
        f"Load average before/after: {load['before'][0]:.2f} / {load['after'][0]:.2f}. Input: the real "
        f"{result['series']} series (256×256×170). Median of {result['repeats']} run(s) (min–max). "
        f"Benchmark wall time {result['wall_s'] / 60:.1f} min. Command: `{result['command']}`.",
        "",
        "## Targets",
        "",
    ]
    return "\n".join(head + _targets(result) + _details(result)) + "\n"
