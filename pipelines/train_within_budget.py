"""Train several configs side by side on one GPU within a wall-clock budget, then pack the results.

A lent GPU comes for minutes, not days, so the number of iterations is set by the clock:

1. Probe: all configs train at once (as they will run) for ``--probe-seconds``, then are
   stopped; each one's steady rate is the median of its logged rates after the first interval
   (start-up).
2. Train: each config's ``optim.iterations`` becomes what its rate fits in the time left, with
   the learning rate decaying linearly over the second half (CycleGAN's schedule, shortened)
   and checkpoints every eighth. Runs still going ``PACK_RESERVE_S`` before the deadline all get
   SIGTERM at once; the trainer then saves a checkpoint and stops (exit 143).
3. Pack: into ``--pack``, the runs' logs and configs in ``logs.tar.gz``, and the generators of
   the newest checkpoints (those fitting a few files of at most 15 MiB) as checkpoint folders
   ``mrct export RUN --checkpoint iter_N`` takes: ``<run>/checkpoints/iter_N/{networks.safetensors,
   state.json}`` beside ``<run>/config.json``.

    python pipelines/train_within_budget.py --data PREPARED --configs A.yaml B.yaml \\
        --runs RUNS --seconds 480 --pack OUT [--probe-seconds 45] [--device cuda]

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
PACK_RESERVE_S = 25  # the last checkpoints' writes, then packing
START_S = 20  # a training process's start: imports, CUDA, data-loader workers
KEEP = 9  # checkpoints kept per run, and the most packed back
STOPPED = {0, 130, 143, -15}  # done; stopped after a checkpoint (130: older mrct); killed before it
FILE_LIMIT, FILES, TOTAL_LIMIT = 15 * MIB, 8, 60 * MIB


def _train(config: Path, data: Path, run: Path, until: int | None, device: str) -> subprocess.Popen:
    """``mrct train`` in the background, its output in ``run/train.log``."""
    run.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mrct", "train", "-c", str(config), "--data", str(data)]
    command += ["-o", str(run), "--overwrite", "--quiet", "--device", device]
    if until is not None:
        command += ["--until", str(until)]
    with (run / "train.log").open("w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _rate(run: Path) -> float:
    """Median logged iterations per second, leaving out the first interval (start-up)."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return statistics.median(r["speed/iterations_per_s"] for r in rows[1:])


def _stop_all(processes: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM to every process still running, at once; SIGKILL to those left after ``grace_s``."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    end = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_all(processes: list[subprocess.Popen], until: float) -> None:
    """Wait until every process has ended or the monotonic clock reaches ``until``."""
    while time.monotonic() < until and any(p.poll() is None for p in processes):
        time.sleep(1.0)


def _scheduled(source: Path, iterations: int, target: Path) -> Path:
    raw = yaml.safe_load(source.read_text())
    raw["optim"]["iterations"] = iterations
    raw["optim"]["decay_iterations"] = iterations // 2
    logging = raw.setdefault("logging", {})
    logging["checkpoint_every"] = max(10, iterations // 8)
    logging["keep_checkpoints"] = KEEP
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


def pack(runs: list[Path], out: Path) -> int:
    """Pack the runs' logs and newest checkpoints into ``out``; returns the checkpoints packed."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for run in runs:
            for name in ("config.json", "data.json", "log.jsonl", "train.log"):
                if (run / name).is_file():
                    tar.add(run / name, f"{run.name}/{name}")
            for preview in sorted((run / "previews").glob("*.png"))[-2:]:
                tar.add(preview, f"{run.name}/previews/{preview.name}")
    newest = {run: sorted((run / "checkpoints").glob("iter_*"), reverse=True) for run in runs}
    order = [(run, ckpts[k]) for k in range(KEEP) for run, ckpts in newest.items() if k < len(ckpts)]
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
    return len(packed)


def _check_inputs(data: Path, configs: list[Path]) -> None:
    """The set and every config, read as ``mrct train`` will: a typo is one line now, not a probe
    that logs nothing and a budget spent."""
    from mrct.errors import ConfigError
    from mrct.training.config import load_train_config
    from mrct.training.data import PreparedSet

    prepared = PreparedSet.open(data)
    for config in configs:
        preprocessing = load_train_config(config).preprocessing
        try:
            prepared.check_preprocessing(preprocessing)
        except ConfigError as err:  # it names the set; which of the configs is wrong matters as much
            raise ConfigError(str(err), config) from None


def main() -> int:
    from mrct.script_main import USAGE, ScriptError, positive_float

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--configs", type=Path, nargs="+", required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument(
        "--seconds", type=positive_float, required=True, help="the whole budget, probe and packing included"
    )
    parser.add_argument("--probe-seconds", type=positive_float, default=45.0, help="the probe's wall time")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pack", type=Path, required=True)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    if args.seconds <= args.probe_seconds + START_S + PACK_RESERVE_S:
        raise ScriptError(
            f"--seconds {args.seconds:g}: leaves no time to train after the {args.probe_seconds:g} s probe "
            f"(the start and packing take {START_S + PACK_RESERVE_S} s more)",
            USAGE,
        )
    _check_inputs(args.data, args.configs)
    args.runs.mkdir(parents=True, exist_ok=True)

    # The probe stops every config at the same moment, so each rate is measured while all run.
    probe_runs = {config: args.runs / f"probe-{config.stem}" for config in args.configs}
    probes = [_train(config, args.data, run, 10**6, args.device) for config, run in probe_runs.items()]
    _wait_all(probes, time.monotonic() + args.probe_seconds)
    for process in probes:
        process.kill()  # a probe's checkpoint is not wanted
        process.wait()
    rates = {}
    failed = []  # what makes the exit code 1, after packing whatever did train
    for config, run in probe_runs.items():
        try:
            rates[config] = _rate(run)
        except (OSError, ValueError, KeyError, statistics.StatisticsError) as err:
            print(
                f"{config.stem}: no rate from the probe ({err!r}):\n{(run / 'train.log').read_text()[-3000:]}"
            )
            failed.append(f"{config.stem} (probe: no rate; see {run / 'train.log'})")
    if not rates:
        raise ScriptError(
            f"no config logged a rate in the {args.probe_seconds:g} s probe: {', '.join(failed)}"
        )

    runs: dict[Path, subprocess.Popen] = {}
    seconds = deadline - time.monotonic() - PACK_RESERVE_S
    for config, rate in rates.items():
        iterations = max(100, int(rate * (seconds - START_S) * 0.92) // 100 * 100)
        print(f"{config.stem}: {rate:.2f} it/s in the probe -> {iterations} iterations in {seconds:.0f} s")
        scheduled = _scheduled(config, iterations, args.runs / f"{config.stem}.yaml")
        runs[args.runs / config.stem] = _train(
            scheduled, args.data, args.runs / config.stem, None, args.device
        )
    _wait_all(list(runs.values()), deadline - PACK_RESERVE_S)
    _stop_all(list(runs.values()), grace_s=PACK_RESERVE_S - 5)
    for run, process in runs.items():
        rows = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").is_file() else []
        last = json.loads(rows[-1]) if rows else {}
        print(
            f"{run.name}: exit {process.returncode}, logged up to iteration {last.get('iteration')}, "
            f"{last.get('speed/iterations_per_s', 0):.2f} it/s, G {last.get('loss/generator/total')}"
        )
        if process.returncode not in STOPPED:
            print((run / "train.log").read_text()[-3000:])
            failed.append(f"{run.name} (exit {process.returncode}; see {run / 'train.log'})")
    if pack(list(runs), args.pack) == 0:
        failed.append(f"no checkpoint to pack in {args.runs}")
    if failed:
        print(f"error: {len(failed)} failure(s): {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from mrct.script_main import run_main

    run_main(main)
