"""Slice-to-slice consistency of synthetic CTs from a 3D model and a frame-wise 2D model
(the paper's §5.2 question, asked of the heads): does translating each axial slice on its own
make the synthetic CT flicker from slice to slice?

    python pipelines/compare_heads_flicker.py --prepared prepared/ \\
        --run work/heads-2d-random --train-iterations 100 --model-2d work/models/heads-2d-random \\
        --model-3d models/mrct-head-cpu-small --cases 5 -o work/heads-flicker \\
        --figure docs/figures/heads_flicker.png --docs docs/reproduction.md

1. **train** (only with ``--run`` and ``--train-iterations`` or ``--train-minutes``, and when
   ``--model-2d`` does not exist yet): ``mrct train -c configs/heads_2d_random.yaml --data
   PREPARED -o RUN --resume`` (the "random" 2D baseline, parameter-matched to ``cpu_small``),
   with ``--until N`` (training is deterministic, so the table can be made again exactly), or
   stopped with SIGTERM after the given wall time (the trainer saves a checkpoint and exits),
   then ``mrct export RUN -o MODEL_2D``. ``--threads`` sets ``OMP_NUM_THREADS`` (1 is fastest
   on a shared 2-core CPU).
2. **translate** the first ``--cases`` MRs of the prepared set's MR *test* split (never seen in
   training) with both models, two ways:

   - on the **model grid**: the prepared 30 x 256 x 256 slab (``PREPARED/mr/<id>.npy``) through
     ``Translator.forward`` (a 2D model runs slice by slice), background set to air outside
     the MR's head mask as ``mrct translate`` does, mapped to HU with each model's own CT map
     (``linear``: [-1, 1] -> [-1024, 3071]). The axial slices here are the model's own, 3.3-4.2 mm apart;
   - on the **input grid**: the whole ``Translator.translate`` path from the source file (the
     slab levels from the prepared record, so no second localisation), as ``mrct translate``
     writes it.

3. **measure** :func:`mrct.metrics.slice_flicker` (mean absolute second difference across
   axial slices, HU) inside the head (model grid: the prepared head mask; input grid: the MR
   head mask inside the slab), and on the model grid :func:`mrct.metrics.relative_flicker`
   against the input MR on the same [-1, 1] scale (1 = as smooth along the slices as the MR).
   Writes ``OUT/flicker.csv`` (one row per case and model), ``OUT/table.md``; with ``--docs``,
   the table goes between ``<!-- heads-table -->`` and ``<!-- /heads-table -->``.
4. **figure** (``--figure``): the midline sagittal reformat of the model grid (superior up,
   anterior left, true aspect: each model slice is drawn as tall as it is thick) of the MR
   and both synthetic CTs, for the first two cases; flicker shows as horizontal banding.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
CT_WINDOW = (-1000.0, 1500.0)  # display only
MARKERS = ("<!-- heads-table -->", "<!-- /heads-table -->")


def to_hu(model_values: npt.NDArray[Any], ct_map: str = "linear") -> npt.NDArray[np.float64]:
    """Model-grid CT values in [-1, 1] to HU with the model's CT map (``linear`` or
    ``soft_tissue``: its package's ``preprocessing.intensity.ct_map``)."""
    from mrct.preprocessing.intensity import ct_map as named_map

    return named_map(ct_map).inverse(model_values).astype(np.float64)


def train_for(
    prepared: Path, run_dir: Path, minutes: float | None, threads: int, iterations: int | None = None
) -> None:
    """Train the random 2D baseline to ``iterations``, or for ``minutes`` of wall time, then stop
    it with SIGTERM."""
    command = ["mrct", "train", "-c", "configs/heads_2d_random.yaml", "--data", str(prepared)]
    command += ["-o", str(run_dir), "--resume", "-q"] + (["--until", str(iterations)] if iterations else [])
    print("$", " ".join(command), f"  # stopped after {minutes:g} min" if minutes else "", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        code = process.wait(timeout=minutes * 60 if minutes else None)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the trainer saves a checkpoint and exits
        process.wait()
        return
    if code != 0:  # it ended on its own before the time was up: finished (0) or failed
        raise subprocess.CalledProcessError(code, command)


def last_iteration(run_dir: Path) -> int:
    lines = (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return int(json.loads(lines[-1])["iteration"]) if lines else 0


def held_out(prepared: Path, cases: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The prepared set's model grid and the first ``cases`` MRs of its test split (manifest
    entries); a missing or unreadable manifest is one clear error."""
    from mrct.errors import ReadError
    from mrct.prepare_manifest import mr_test_split

    path = prepared / "manifest.json"
    manifest, entries = mr_test_split(prepared)
    entries = entries[:cases]
    grid = manifest.get("config", {}).get("grid") if isinstance(manifest.get("config"), dict) else None
    if not isinstance(grid, dict):
        raise ReadError("not a readable prepared-set manifest (no config.grid)", path)
    if not entries:
        raise ReadError("no MR in the test split; nothing to compare", path)
    return grid, entries


def grid_text(grid: dict[str, Any]) -> str:
    return f"{grid['depth']}x{grid['height']}x{grid['width']} at {float(grid['inplane_mm']):g} mm in-plane"


def check_grid(translator: Any, model: object, prepared: Path, grid: dict[str, Any]) -> None:
    """Refuse a model whose grid is not the prepared set's: its forward pass would run on arrays
    of another shape and spacing, and its flicker would mean nothing."""
    from dataclasses import asdict

    from mrct.errors import ModelError

    own = asdict(translator.package.preprocessing.grid)
    keys = ("depth", "height", "width", "inplane_mm")
    if any(float(own[k]) != float(grid[k]) for k in keys):
        raise ModelError(
            f"model grid {grid_text(own)} differs from the prepared set's {grid_text(grid)} "
            f"({prepared / 'manifest.json'}); prepare the set with the model's preprocessing",
            str(model),
        )


def model_grid_flicker(
    mr: npt.NDArray[Any], mask: npt.NDArray[Any], sct: npt.NDArray[Any], ct_map: str = "linear"
) -> dict[str, float]:
    """Flicker of a model-grid sCT ([-1, 1], background already air) inside ``mask``: in HU;
    relative to the input MR on the [-1, 1] scale; and relative to the sCT's own in-plane
    roughness (the same second difference along H and W, averaged), which does not depend on
    the sCT's contrast. Also the sCT's standard deviation inside the mask (HU)."""
    from mrct.metrics import relative_flicker, slice_flicker

    hu = to_hu(sct, ct_map)
    across = slice_flicker(hu, mask)
    in_plane = (slice_flicker(hu, mask, axis=1) + slice_flicker(hu, mask, axis=2)) / 2
    return {
        "flicker_hu_model_grid": across,
        "flicker_vs_mr_model_grid": relative_flicker(sct, mr, mask),
        "flicker_vs_inplane_model_grid": across / in_plane if in_plane > 0 else float("inf"),
        "sd_hu_model_grid": float(np.std(hu[np.asarray(mask, dtype=bool)])),
    }


def input_grid_flicker(volume: Any, sct: Any, superior_mm: float, inferior_mm: float) -> float:
    """Flicker (HU) of an sCT on the input grid, across the array axis closest to S, inside the
    MR head mask within the slab."""
    from mrct.metrics import mr_head_mask, slab_voxels, slice_flicker

    mask = mr_head_mask(volume) & slab_voxels(volume, superior_mm, inferior_mm)
    axis = int(np.argmax(np.abs(volume.affine[2, :3])))
    return slice_flicker(np.asarray(sct.array, dtype=np.float64), mask, axis=axis)


def sagittal(
    volume: npt.NDArray[Any], slice_mm: float, window: tuple[float, float], zoom: int = 1
) -> npt.NDArray[np.uint8]:
    """Midline sagittal reformat of a (D, H, W) model-grid array (D inferior->superior, H
    anterior->posterior, 1 mm in-plane): superior up, anterior left, rows repeated to ``slice_mm``
    so the picture has its true aspect, then everything ``zoom`` times."""
    plane = np.asarray(volume)[::-1, :, volume.shape[2] // 2]
    plane = np.repeat(np.repeat(plane, max(1, round(slice_mm)) * zoom, axis=0), zoom, axis=1)
    low, high = window
    return np.asarray(np.clip((plane - low) / (high - low), 0, 1) * 255, dtype=np.uint8)


def figure(panels: list[list[tuple[str, npt.NDArray[np.uint8]]]], path: Path) -> None:
    """Rows of titled greyscale panels, written as PNG."""
    gap, title = 4, 14
    height = sum(max(p.shape[0] for _, p in row) + title + gap for row in panels)
    width = max(sum(p.shape[1] + gap for _, p in row) for row in panels)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=12)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType
        font = ImageFont.load_default()
    y = 0
    for row in panels:
        x = 0
        for label, image in row:
            draw.text((x + 2, y + 1), label, fill=(0, 0, 0), font=font)
            canvas.paste(Image.fromarray(image).convert("RGB"), (x, y + title))
            x += image.shape[1] + gap
        y += max(p.shape[0] for _, p in row) + title + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", optimize=True)
    print(f"wrote {path}")


def table(rows: list[dict[str, Any]], models: dict[str, str]) -> str:
    columns = (
        "flicker_hu_model_grid",
        "flicker_vs_mr_model_grid",
        "flicker_vs_inplane_model_grid",
        "sd_hu_model_grid",
        "flicker_hu_input_grid",
    )
    lines = [
        "| model | cases | flicker, model grid (HU) | flicker / input MR's | flicker / own in-plane "
        "roughness | sd inside head (HU) | flicker, input grid (HU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, label in models.items():
        mine = [r for r in rows if r["model"] == model]
        cells = []
        for c in columns:
            v = [float(r[c]) for r in mine]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            digits = 0 if "hu" in c else 2
            cells.append(f"{statistics.fmean(v):.{digits}f} ± {sd:.{digits}f}")
        lines.append(f"| {label} | {len(mine)} | " + " | ".join(cells) + " |")
    names = list(models)
    if len(names) == 2:
        ratios = []
        for case in dict.fromkeys(r["case"] for r in rows):
            a, b = (next(r for r in rows if r["case"] == case and r["model"] == m) for m in names)
            ratios.append(float(b["flicker_hu_model_grid"]) / float(a["flicker_hu_model_grid"]))
        lines += [
            "",
            f"Per case, {models[names[1]]} flickers {statistics.fmean(ratios):.2f}x as much as "
            f"{models[names[0]]} on the model grid (range {min(ratios):.2f}-{max(ratios):.2f}).",
        ]
    return "\n".join(lines)


def put_between_markers(doc: Path, text: str) -> None:
    source = doc.read_text(encoding="utf-8")
    pattern = f"{re.escape(MARKERS[0])}.*?{re.escape(MARKERS[1])}"
    if not re.search(pattern, source, flags=re.S):
        raise SystemExit(f"error: {doc}: no {MARKERS[0]} ... {MARKERS[1]} block")
    new = re.sub(pattern, lambda _: f"{MARKERS[0]}\n{text}\n{MARKERS[1]}", source, flags=re.S)
    doc.write_text(new, encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from mrct.script_main import positive_float, positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepared", required=True, type=Path, help="the prepared head set (mrct prepare)")
    p.add_argument("--model-3d", default="mrct-head-cpu-small", help="3D model package: a name or a folder")
    p.add_argument("--model-2d", required=True, type=Path, help="2D model package (exported here)")
    p.add_argument("--run", type=Path, help="training run folder of the 2D model")
    p.add_argument("--train-minutes", type=positive_float, help="train the 2D model for this wall time first")
    p.add_argument("--train-iterations", type=positive_int, help="or to this iteration (reproducible)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (default 1)")
    p.add_argument("--cases", type=positive_int, default=5, help="held-out MRs to translate (default 5)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the CSV and table")
    p.add_argument("--figure", type=Path, help="write the sagittal figure here (PNG)")
    p.add_argument("--docs", type=Path, help="put the table between the heads-table markers of this file")
    args = p.parse_args(argv)
    if args.train_minutes and args.train_iterations:
        p.error("give --train-iterations or --train-minutes, not both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Training and export run in the repository (cwd), so the user's relative paths are made absolute.
    args.prepared, args.model_2d = args.prepared.absolute(), args.model_2d.absolute()
    args.run = args.run and args.run.absolute()
    # The set and the 3D model are checked before the 2D model trains (minutes) or anything runs.
    grid, cases = held_out(args.prepared, args.cases)

    import torch

    from mrct.inference import Translator
    from mrct.io import read_volume
    from mrct.preprocessing.crop import CropRequest
    from mrct.volume import Modality

    torch.set_num_threads(args.threads)
    # fp32: "auto" is bf16 on CPUs with native bf16, so the table would depend on the CPU.
    translators = {"3d": Translator.from_package(args.model_3d, device="cpu", precision="fp32")}
    check_grid(translators["3d"], args.model_3d, args.prepared, grid)
    if not (args.model_2d / "model.json").exists():
        if args.run is None:
            raise SystemExit(f"error: {args.model_2d}: no model package; give --run (and --train-iterations)")
        if args.train_minutes or args.train_iterations:
            start = time.perf_counter()
            train_for(args.prepared, args.run, args.train_minutes, args.threads, args.train_iterations)
            print(f"trained to iteration {last_iteration(args.run)} in {time.perf_counter() - start:.0f} s")
        command = ["mrct", "export", str(args.run), "-o", str(args.model_2d), "--overwrite"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    translators["2d_random"] = Translator.from_package(args.model_2d, device="cpu", precision="fp32")
    check_grid(translators["2d_random"], args.model_2d, args.prepared, grid)
    labels = {}
    ct_maps = {name: t.package.preprocessing.intensity.ct_map for name, t in translators.items()}
    for name, translator in translators.items():
        training = translator.package.manifest.get("training", {})
        labels[name] = f"{'3D' if name == '3d' else '2D random'} ({training.get('iterations', '?')} it.)"
    rows: list[dict[str, Any]] = []
    panels = []
    for n, entry in enumerate(cases):
        scan_id = entry["id"]
        mr = np.load(args.prepared / "mr" / f"{scan_id}.npy")
        mask = np.load(args.prepared / "mr" / f"{scan_id}_mask.npy") > 0
        record = json.loads((args.prepared / "mr" / f"{scan_id}.json").read_text(encoding="utf-8"))
        slice_mm = float(np.linalg.norm(np.asarray(record["grid"]["affine"])[:3, 0]))
        sup, inf = record["slab"]["superior_mm"], record["slab"]["inferior_mm"]
        volume = read_volume(entry["source"], series=entry.get("series"))
        window = (float(np.percentile(mr[mask], 1)), float(np.percentile(mr[mask], 99.5)))
        row_panels = [(f"{scan_id} MR", sagittal(np.where(mask, mr, -1.0), slice_mm, window, zoom=2))]
        for name, translator in translators.items():
            sct = np.where(mask, translator.forward("mr_to_ct", mr), -1.0)
            result = translator.translate(volume, Modality.CT, CropRequest.millimetres(sup, inf))
            rows.append(
                {
                    "case": scan_id,
                    "model": name,
                    "slice_mm": round(slice_mm, 3),
                    **model_grid_flicker(mr, mask, sct, ct_maps[name]),
                    "flicker_hu_input_grid": input_grid_flicker(volume, result.volume, sup, inf),
                }
            )
            row_panels.append(
                (f"sCT {labels[name]}", sagittal(to_hu(sct, ct_maps[name]), slice_mm, CT_WINDOW, zoom=2))
            )
            print(f"{scan_id} {name}: {rows[-1]}", flush=True)
        if n < 2:
            panels.append(row_panels)
    args.output.mkdir(parents=True, exist_ok=True)
    with (args.output / "flicker.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    text = table(rows, labels)
    (args.output / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    if args.docs:
        put_between_markers(args.docs, text)
    if args.figure:
        figure(panels, args.figure)
    return 0


if __name__ == "__main__":
    from mrct.script_main import run_main

    run_main(main)
