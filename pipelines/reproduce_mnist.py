"""The paper's Volumetric MNIST experiment (Bashkirova, Usman & Saenko 2018, §5.2, Table 2),
end to end: the 3D CycleGAN against its three frame-wise 2D baselines.

    python pipelines/reproduce_mnist.py --idx ../shared/data/mnist/t10k-images-idx3-ubyte.gz \\
        --labels ../shared/data/mnist/t10k-labels-idx1-ubyte.gz -o work/repro-mnist \\
        --count 500 --size 28 --depth 16 --iterations 600 --threads 1 \\
        --figure docs/figures/mnist_reproduction.png --docs docs/reproduction.md

Steps (each is skipped when its output exists, so an interrupted run continues where it
stopped; training resumes from its newest checkpoint):

1. **build** ``OUT/vmnist`` with ``pipelines/volumetric_mnist.py`` (``--count``, ``--size``,
   ``--depth``, ``--seed``);
2. **configs**: ``OUT/configs/<method>.yaml``, each ``configs/<method>.yaml`` (parameter-matched:
   3D 261,569 generator parameters, 2D 263,033) at the chosen scale: the grid ``depth x size x
   size``, ``--iterations`` with linear decay over the second half (the paper's schedule
   shape), and the 2D baselines' batch of ``depth`` slices (the voxels of one volume). Nothing
   else changes, so all four methods train on the same data with the same budget;
3. **train** each method with ``mrct train -c OUT/configs/<method>.yaml --data OUT/vmnist -o
   OUT/runs/<method> --resume`` (one after another; ``--threads`` sets ``OMP_NUM_THREADS``:
   on a shared 2-core CPU one thread per process is about 4x faster than two);
4. **export** each run with ``mrct export`` to ``OUT/models/<method>``;
5. **translate** the test split with each model in both directions (A spherical -> B sandglass
   is ``mr_to_ct``; B -> A is ``ct_to_mr``) on the model grid (``Translator.forward``: a 2D
   model runs slice by slice) to ``OUT/pred/<method>/<direction>/<id>.npy``, plus ``input``:
   the test inputs unchanged, the L2 scale's reference point;
6. **evaluate** with ``mrct.api.evaluate(..., metric="mnist-l2")`` (what ``mrct evaluate PRED GT
   --metric mnist-l2`` does) against ``OUT/gt/<domain>/``, links to the test split's ground
   truth: ``OUT/results/<method>_<direction>.csv``, one row per test volume (L2, slice flicker
   of the prediction and of the ground truth, their ratio);
7. **table** ``OUT/results/table.md`` and ``summary.json`` (mean ± sample sd per method and
   direction, with the paper's Table 2 L2 beside ours), printed, and with ``--docs FILE`` put
   between ``<!-- mnist-table -->`` and ``<!-- /mnist-table -->`` in that file;
8. **figure** (``--figure``, PNG): for three test digits, a few slices of the input, each
   method's translation and the ground truth (A -> B).

L2 is :func:`mrct.metrics.volumetric_mnist_l2`: the Euclidean norm over the whole volume of
the difference on the [0, 1] scale, so it grows with the square root of the voxel count;
compare methods within one scale, not with the paper's numbers directly.

Exit code 0 when the table is written; 1 when a step fails (its command says why, then one line
names the step); a bad argument, 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("mnist_3d", "mnist_2d_random", "mnist_2d_sequential", "mnist_2d_sequential_const")
LABELS = {
    "input": "input unchanged",
    "mnist_3d": "3D CycleGAN",
    "mnist_2d_random": "2D random",
    "mnist_2d_sequential": "2D sequential",
    "mnist_2d_sequential_const": "2D sequential + const",
}
PAPER_L2 = {  # Table 2 of the paper (30 x 84 x 84 volumes), spherical -> sandglass
    "mnist_3d": 27.21,
    "mnist_2d_random": 48.73,
    "mnist_2d_sequential": 41.73,
    "mnist_2d_sequential_const": 73.41,
}
DIRECTIONS = {"mr_to_ct": ("mr", "ct", "A→B (spherical → sandglass)"), "ct_to_mr": ("ct", "mr", "B→A")}
MARKERS = ("<!-- mnist-table -->", "<!-- /mnist-table -->")


def run(step: str, command: list[str], env: dict[str, str] | None = None) -> None:
    """Run one command (printed first, as it would be typed); stop on failure."""
    print("$", " ".join(command), flush=True)
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    if code != 0:  # the command has said why on stderr; one line says which step stopped the run
        raise SystemExit(f"error: step {step} failed (exit {code})")


def check_built(data: Path, args: argparse.Namespace) -> None:
    """Refuse a work folder whose data set was built with other arguments: its models and
    predictions would be reused, and the table labelled with the new arguments."""
    from mrct.script_main import USAGE, ScriptError

    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    grid, split = manifest["config"]["grid"], manifest["split"]["mr"]
    built = {
        "--count": len(split["train"]) + len(split["test"]),
        "--size": grid["height"],
        "--depth": grid["depth"],
        "--seed": manifest["seed"],
    }
    asked = {"--count": args.count, "--size": args.size, "--depth": args.depth, "--seed": args.seed}
    differ = [f"{k} {built[k]}" for k in built if built[k] != asked[k]]
    if differ:
        raise ScriptError(f"{data}: built with {', '.join(differ)}; give the same values, or a new -o", USAGE)


def scaled_config(source: Path, depth: int, size: int, iterations: int) -> dict[str, Any]:
    """``source`` at another scale: grid, iterations (decay over the second half), 2D batch."""
    cfg: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    cfg["preprocessing"]["grid"].update(depth=depth, height=size, width=size)
    cfg["optim"].update(iterations=iterations, decay_iterations=iterations // 2)
    if cfg["model"]["generator"]["spatial_dims"] == 2:
        cfg["data"]["batch_size"] = depth  # one volume's voxels per iteration, as the 3D model
    return cfg


def write_configs(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Each method's config at the asked scale, as ``folder/<method>.yaml``. A grid too small
    for a method's networks is refused here: it failed only at training, after the build."""
    from mrct.config import from_mapping
    from mrct.errors import ConfigError
    from mrct.script_main import USAGE, ScriptError
    from mrct.training.config import TrainConfig
    from mrct.training.sizes import check_input_size

    scaled = {}
    for method in args.methods:
        cfg = scaled_config(ROOT / "configs" / f"{method}.yaml", args.depth, args.size, args.iterations)
        try:
            check_input_size(from_mapping(TrainConfig, cfg), (args.depth, args.size, args.size))
        except ConfigError as err:
            raise ScriptError(f"--size {args.size} --depth {args.depth}: {method}: {err}", USAGE) from None
        scaled[method] = cfg
    folder.mkdir(parents=True, exist_ok=True)
    for method, cfg in scaled.items():
        (folder / f"{method}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return {method: folder / f"{method}.yaml" for method in scaled}


def test_ids(data: Path) -> list[str]:
    pairs = json.loads((data / "pairs.json").read_text(encoding="utf-8"))["pairs"]
    return [p["mr"] for p in pairs]


def translate_split(package: Path, data: Path, out: Path, ids: list[str], threads: int) -> None:
    """Both directions of every test volume on the model grid, as ``out/<direction>/<id>.npy``."""
    import torch

    from mrct.inference import Translator

    torch.set_num_threads(threads)
    # fp32: "auto" is bf16 on CPUs with native bf16, which moved the table's second decimal.
    translator = Translator.from_package(package, device="cpu", precision="fp32")
    for direction, (src, _, _) in DIRECTIONS.items():
        folder = out / direction
        folder.mkdir(parents=True, exist_ok=True)
        for i in ids:
            image = np.load(data / src / f"{i}.npy")
            np.save(folder / f"{i}.npy", np.clip(translator.forward(direction, image), -1.0, 1.0))


def copy_inputs(data: Path, out: Path, ids: list[str]) -> None:
    for direction, (src, _, _) in DIRECTIONS.items():
        (out / direction).mkdir(parents=True, exist_ok=True)
        for i in ids:
            np.save(out / direction / f"{i}.npy", np.load(data / src / f"{i}.npy"))


def link_ground_truth(data: Path, out: Path, ids: list[str]) -> None:
    """``out/<domain>/<id>.npy``: links to the test volumes only, the ground truth evaluated.
    ``data/<domain>`` holds the training split too, which is never predicted: evaluated against
    the whole folder, every method and direction would warn that those volumes are left out."""
    from mrct.script_main import ScriptError

    for domain in ("mr", "ct"):  # links of an earlier run go; anything else is not ours to delete
        folder = out / domain
        for old in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not old.is_symlink():
                raise ScriptError(f"{old}: not a link this script made; move it out of {out}")
            old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for i in ids:  # relative, so the work folder can be moved
            (folder / f"{i}.npy").symlink_to(os.path.relpath(data / domain / f"{i}.npy", folder))


def stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "median": statistics.median(values),
    }


def summarise(results: Path, methods: list[str]) -> dict[str, Any]:
    """Mean, sd and median of each CSV column, per method and direction."""
    import csv

    summary: dict[str, Any] = {}
    for method in methods:
        for direction in DIRECTIONS:
            with (results / f"{method}_{direction}.csv").open(encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            columns = [c for c in rows[0] if c != "case"]
            summary.setdefault(method, {})[direction] = {
                "cases": len(rows),
                **{c: stats([float(r[c]) for r in rows]) for c in columns},
            }
    return summary


def table(summary: dict[str, Any], scale: str) -> str:
    """The markdown results table (L2 and flicker ratio, both directions, paper's L2 beside)."""
    lines = [
        f"Scale: {scale}.",
        "",
        "| method | L2 A→B (ours) | L2 A→B (paper, 30×84×84) | L2 B→A (ours) "
        "| flicker ratio A→B | flicker ratio B→A |",
        "|---|---|---|---|---|---|",
    ]
    for method, by_dir in summary.items():
        ab, ba = by_dir["mr_to_ct"], by_dir["ct_to_mr"]
        paper = f"{PAPER_L2[method]:.2f}" if method in PAPER_L2 else "–"
        lines.append(
            f"| {LABELS[method]} | {ab['l2']['mean']:.2f} ± {ab['l2']['sd']:.2f} | {paper} "
            f"| {ba['l2']['mean']:.2f} ± {ba['l2']['sd']:.2f} "
            f"| {ab['flicker_ratio']['mean']:.2f} ± {ab['flicker_ratio']['sd']:.2f} "
            f"| {ba['flicker_ratio']['mean']:.2f} ± {ba['flicker_ratio']['sd']:.2f} |"
        )
    n = next(iter(summary.values()))["mr_to_ct"]["cases"]
    lines += [
        "",
        f"Mean ± sample sd over the {n} test volumes. L2: Euclidean norm of the difference on "
        "the [0, 1] scale over the whole volume (`mrct.metrics.volumetric_mnist_l2`). Flicker "
        "ratio: the mean absolute second difference across slices of the translation over that "
        "of the ground truth (1 = as smooth as the ground truth).",
    ]
    return "\n".join(lines)


def put_between_markers(doc: Path, text: str) -> None:
    """Replace what lies between the two markers in ``doc`` with ``text``."""
    source = doc.read_text(encoding="utf-8")
    start, end = (re.escape(m) for m in MARKERS)
    if not re.search(f"{start}.*?{end}", source, flags=re.S):
        raise SystemExit(f"error: {doc}: no {MARKERS[0]} ... {MARKERS[1]} block")
    new = re.sub(f"{start}.*?{end}", lambda _: f"{MARKERS[0]}\n{text}\n{MARKERS[1]}", source, flags=re.S)
    doc.write_text(new, encoding="utf-8")


def _tile(volume: npt.NDArray[Any], t: int, zoom: int) -> npt.NDArray[np.uint8]:
    image = np.clip((volume[t] + 1.0) * 127.5, 0, 255).astype(np.uint8)
    return np.kron(image, np.ones((zoom, zoom), dtype=np.uint8))


def figure(data: Path, pred: Path, methods: list[str], ids: list[str], path: Path) -> None:
    """Rows: input, each method, ground truth; columns: 5 slices of each of the digits ``ids``."""
    first = np.load(data / "mr" / f"{ids[0]}.npy")
    depth, size = first.shape[0], first.shape[1]
    zoom = max(1, 84 // size)
    slices = [round(float(t)) for t in np.linspace(0, depth - 1, 5)]
    rows = [("input (A, spherical)", data / "mr")]
    rows += [(LABELS[m], pred / m / "mr_to_ct") for m in methods]
    rows += [("ground truth (B, sandglass)", data / "ct")]
    tile, gap, block_gap, left, top = size * zoom, 2, 12, 170, 34
    width = left + len(ids) * (len(slices) * (tile + gap) + block_gap)
    height = top + len(rows) * (tile + gap)
    canvas = np.full((height, width), 255, dtype=np.uint8)
    for r, (_, folder) in enumerate(rows):
        for b, i in enumerate(ids):
            volume = np.load(folder / f"{i}.npy")
            for c, t in enumerate(slices):
                x = left + b * (len(slices) * (tile + gap) + block_gap) + c * (tile + gap)
                y = top + r * (tile + gap)
                canvas[y : y + tile, x : x + tile] = _tile(volume, t, zoom)
    image = Image.fromarray(canvas).convert("RGB")
    draw = ImageDraw.Draw(image)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=13)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType
        font = ImageFont.load_default()
    for r, (label, _) in enumerate(rows):
        draw.text((4, top + r * (tile + gap) + tile // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    for b, i in enumerate(ids):
        x0 = left + b * (len(slices) * (tile + gap) + block_gap)
        draw.text((x0, 2), f"test digit {i}", fill=(0, 0, 0), font=font)
        for c, t in enumerate(slices):
            draw.text((x0 + c * (tile + gap) + 2, 18), f"t={t}", fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    print(f"wrote {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from mrct.script_main import non_negative_int, positive_int

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--idx", required=True, help="MNIST images, IDX format (.gz or not)")
    p.add_argument("--labels", help="MNIST labels, IDX format")
    p.add_argument(
        "-o", "--output", required=True, type=Path, help="work folder (data, runs, models, results)"
    )
    p.add_argument(
        "--count",
        type=positive_int,
        default=500,
        help="volumes per domain (default 500: 350 train, 150 test)",
    )
    p.add_argument("--size", type=positive_int, default=84, help="in-plane size (default 84, the paper's)")
    p.add_argument("--depth", type=positive_int, default=30, help="slices (default 30, the paper's)")
    p.add_argument(
        "--iterations", type=positive_int, default=4000, help="training iterations per method (default 4000)"
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="data set seed (training seeds are the configs')"
    )
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads per process (default 1)")
    p.add_argument("--device", default="auto", help="training device: auto, cpu, cuda (default auto)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="default: all four")
    p.add_argument("--figure", type=Path, help="write the figure here (PNG)")
    p.add_argument("--docs", type=Path, help="put the table between the mnist-table markers of this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.output.resolve()
    data, results = out / "vmnist", out / "results"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    scale = (
        f"{args.count} volumes per domain ({args.count - (args.count * 7 + 5) // 10} test), "
        f"{args.depth}×{args.size}×{args.size} voxels, {args.iterations} iterations per method "
        f"(linear decay over the last {args.iterations // 2}), seed {args.seed}"
    )
    # The steps run in the repository (cwd), so paths given relative to the user's folder are made absolute.
    idx, labels = os.path.abspath(args.idx), args.labels and os.path.abspath(args.labels)
    configs = write_configs(out / "configs", args)  # checked before the data set is built
    if (data / "manifest.json").exists():
        check_built(data, args)
    else:
        command = [sys.executable, "pipelines/volumetric_mnist.py", "--idx", idx, "-o", str(data)]
        command += ["--count", str(args.count), "--size", str(args.size), "--depth", str(args.depth)]
        command += ["--seed", str(args.seed)] + (["--labels", labels] if labels else [])
        run("build", command)
    ids = test_ids(data)
    timings: dict[str, float] = {}
    for method, config in configs.items():
        run_dir, package = out / "runs" / method, out / "models" / method
        if not (run_dir / "checkpoints" / f"iter_{args.iterations:07d}").exists():
            start = time.perf_counter()
            command = ["mrct", "train", "-c", str(config), "--data", str(data), "-o", str(run_dir)]
            run(f"train {method}", [*command, "--resume", "--device", args.device, "-q"], env)
            timings[method] = time.perf_counter() - start
        if not (package / "model.json").exists():
            run(f"export {method}", ["mrct", "export", str(run_dir), "-o", str(package), "--overwrite"], env)
        if not (out / "pred" / method / "ct_to_mr" / f"{ids[-1]}.npy").exists():
            print(f"translating the {len(ids)} test volumes with {method}", flush=True)
            translate_split(package, data, out / "pred" / method, ids, args.threads)
    if timings:
        print("training wall time (s):", json.dumps({k: round(v) for k, v in timings.items()}))
    copy_inputs(data, out / "pred" / "input", ids)

    from mrct.api import evaluate

    results.mkdir(parents=True, exist_ok=True)
    link_ground_truth(data, out / "gt", ids)
    shown = ["input", *args.methods]
    for method in shown:
        for direction, (_, target, _) in DIRECTIONS.items():
            csv_path = results / f"{method}_{direction}.csv"
            evaluate(
                out / "pred" / method / direction,
                out / "gt" / target,
                csv_path,
                metric="mnist-l2",
                overwrite=True,
            )
    summary = summarise(results, shown)
    (results / "summary.json").write_text(json.dumps({"scale": scale, "methods": summary}, indent=2) + "\n")
    text = table(summary, scale)
    (results / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    if args.docs:
        put_between_markers(args.docs, text)
    if args.figure:
        figure(data, out / "pred", args.methods, ids[:3], args.figure)
    return 0


if __name__ == "__main__":
    from mrct.script_main import run_main

    run_main(main)
