"""Train several configs side by side on one GPU within a wall-clock budget, then pack the results.

A lent GPU comes for minutes, not days, so the number of iterations is set by the clock:

1. Probe: each config trains ``--probe`` iterations, all at once (as they will run), and its
   steady rate is read from its ``log.jsonl``.
2. Train: each config's ``optim.iterations`` becomes what its rate fits in the time left, with
   the learning rate decaying linearly over the second half (CycleGAN's schedule, shortened)
   and checkpoints every eighth. ``timeout`` sends SIGTERM at the deadline, on which the
   trainer saves a checkpoint and stops.
3. Pack: into ``--pack``, the runs' logs and configs in ``logs.tar.gz``, and the generators of
   the newest checkpoints (those fitting a few files of at most 15 MiB) as checkpoint folders
   ``mrct export RUN --checkpoint iter_N`` takes: ``<run>/checkpoints/iter_N/{networks.safetensors,
   state.json}`` beside ``<run>/config.json``.

    python pipelines/train_within_budget.py --data PREPARED --configs A.yaml B.yaml \\
        --runs RUNS --seconds 480 --pack OUT

Every process is ``python -m mrct train``, so what runs is exactly the CLI a user has.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

MIB = 2**20
PACK_RESERVE_S = 25  # packing and the last checkpoint's write
FILE_LIMIT, FILES, TOTAL_LIMIT = 15 * MIB, 8, 60 * MIB


def _train(
    config: Path, data: Path, run: Path, until: int | None, device: str, log: Path
) -> subprocess.Popen:
    command = [sys.executable, "-m", "mrct", "train", "-c", str(config), "--data", str(data)]
    command += ["-o", str(run), "--overwrite", "--quiet", "--device", device]
    if until is not None:
        command += ["--until", str(until)]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _rate(run: Path, skip: int) -> float:
    """Median logged iterations per second after the first ``skip`` iterations (start-up)."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rates = [r["speed/iterations_per_s"] for r in rows if r["iteration"] > skip]
    return statistics.median(rates)


def _scheduled(source: Path, iterations: int, target: Path) -> Path:
    raw = yaml.safe_load(source.read_text())
    raw["optim"]["iterations"] = iterations
    raw["optim"]["decay_iterations"] = iterations // 2
    raw["logging"]["checkpoint_every"] = max(10, iterations // 8)
    raw["logging"]["keep_checkpoints"] = 9
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def _generators_only(checkpoint: Path) -> bytes:
    from safetensors.torch import load_file, save

    networks = load_file(str(checkpoint / "networks.safetensors"))
    return save({k: v for k, v in networks.items() if k.startswith("generators.")})


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack(runs: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for run in runs:
            for name in ("config.json", "data.json", "log.jsonl", "train.log"):
                if (run / name).is_file():
                    tar.add(run / name, f"{run.name}/{name}")
            for preview in sorted((run / "previews").glob("*.png"))[-2:]:
                tar.add(preview, f"{run.name}/previews/{preview.name}")
    newest = {run: sorted((run / "checkpoints").glob("iter_*"), reverse=True) for run in runs}
    order = [(run, ckpts[k]) for k in range(9) for run, ckpts in newest.items() if k < len(ckpts)]
    bins: list[list[tuple[str, bytes]]] = []
    total = (out / "logs.tar.gz").stat().st_size
    for run, ckpt in order:
        members = [
            (f"{run.name}/checkpoints/{ckpt.name}/networks.safetensors", _generators_only(ckpt)),
            (f"{run.name}/checkpoints/{ckpt.name}/state.json", (ckpt / "state.json").read_bytes()),
        ]
        size = sum(len(data) for _, data in members) + 4096
        if total + size > TOTAL_LIMIT:
            continue
        home = next((b for b in bins if sum(len(d) for _, d in b) + size <= FILE_LIMIT), None)
        if home is None and len(bins) < FILES - 2 and size <= FILE_LIMIT:  # + logs, driver log
            home = []
            bins.append(home)
        if home is not None:
            home.extend(members)
            total += size
    for k, members in enumerate(bins):
        with tarfile.open(out / f"checkpoints-{k}.tar", "w") as tar:
            for name, data in members:
                _add(tar, name, data)
    packed = sorted(name.rsplit("/", 1)[0] for b in bins for name, _ in b if name.endswith("state.json"))
    print(f"packed {len(packed)} checkpoints in {len(bins)} files ({total / MIB:.1f} MiB): {packed}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--configs", type=Path, nargs="+", required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument(
        "--seconds", type=float, required=True, help="the whole budget, probe and packing included"
    )
    parser.add_argument("--probe", type=int, default=60, help="probe iterations (rates after the first 20)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pack", type=Path, required=True)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    args.runs.mkdir(parents=True, exist_ok=True)

    probes = {}
    for config in args.configs:
        run = args.runs / f"probe-{config.stem}"
        run.mkdir(parents=True, exist_ok=True)
        probes[config] = (run, _train(config, args.data, run, args.probe, args.device, run / "train.log"))
    rates = {}
    for config, (run, process) in probes.items():
        if process.wait() != 0:
            print(f"{config.stem}: the probe failed:\n{(run / 'train.log').read_text()[-3000:]}")
            continue
        try:
            rates[config] = _rate(run, skip=20)
        except (OSError, ValueError, KeyError, statistics.StatisticsError) as err:
            print(f"{config.stem}: no rate in the probe's log ({err!r})")
    started = {}
    seconds = deadline - time.monotonic() - PACK_RESERVE_S
    for config, rate in rates.items():
        iterations = max(100, int(rate * (seconds - 20) * 0.92) // 100 * 100)  # 20 s to start
        print(f"{config.stem}: {rate:.2f} it/s in the probe -> {iterations} iterations in {seconds:.0f} s")
        run = args.runs / config.stem
        run.mkdir(parents=True, exist_ok=True)
        scheduled = _scheduled(config, iterations, args.runs / f"{config.stem}.yaml")
        started[run] = _train(scheduled, args.data, run, None, args.device, run / "train.log")
    for run, process in started.items():
        left = deadline - time.monotonic() - PACK_RESERVE_S
        try:
            process.wait(timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            process.terminate()  # the trainer saves a checkpoint after this iteration
            try:
                process.wait(timeout=PACK_RESERVE_S - 5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        rows = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").is_file() else []
        last = json.loads(rows[-1]) if rows else {}
        print(
            f"{run.name}: exit {process.returncode}, logged up to iteration {last.get('iteration')}, "
            f"{last.get('speed/iterations_per_s', 0):.2f} it/s, G {last.get('loss/generator/total')}"
        )
        if process.returncode not in (0, -15):
            print((run / "train.log").read_text()[-3000:])
    pack(list(started), args.pack)


if __name__ == "__main__":
    main()
