"""The measuring side of ``benchmarks/train.py``: each configuration runs here, in a fresh process.

    python benchmarks/train_workers.py '{"kind": "iteration", "device": "cpu", ...}'

prints one line, ``mrct-benchmark-result: {JSON}``. A fresh process per configuration keeps
its peak memory its own (``ru_maxrss`` never falls, and CUDA's caching allocator keeps what it
took). ``run_worker`` is the parent's side: it starts this script and reads that line back.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from plain_generator import plain_generator  # benchmarks/ is on sys.path: run as a script

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RESULT = "mrct-benchmark-result: "  # prefixes a worker's JSON line on stdout


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in a fresh Python process; its last stdout line is the JSON result."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        return {"error": f"exit {proc.returncode}: {tail[0]}", "wall_s": wall}
    line = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)][-1]
    return {**json.loads(line[len(RESULT) :]), "wall_s": wall}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _inputs(size: Any, device: Any, batch: int = 1) -> tuple[Any, Any]:
    """Random MR and CT volumes in [-1, 1], (N, 1, D, H, W), from a fixed seed."""
    import torch

    g = torch.Generator().manual_seed(0)
    shape = (batch, 1, *size)
    mr = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    ct = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    return mr, ct


def iteration_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``Trainer.step`` for one configuration; memory from this fresh process."""
    import tempfile
    from dataclasses import replace

    import torch

    from mrct.training.config import load_train_config
    from mrct.training.distributed import DistContext
    from mrct.training.trainer import Trainer

    device = torch.device(spec["device"])
    config = load_train_config(CONFIGS / f"{spec['config']}.yaml")
    runtime = replace(
        config.runtime, amp=spec["amp"], channels_last=spec["channels_last"], compile=spec["compile"]
    )
    config = replace(config, runtime=runtime)
    mr, ct = _inputs(spec["size"], device, config.data.batch_size)
    _sync(device)
    rss_before = _peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        # No PreparedSet: step() is fed tensors directly, the loader is not what is measured.
        trainer = Trainer(config, None, Path(run_dir), device, DistContext())  # type: ignore[arg-type]
        for i in range(spec["warmup"] + spec["repeats"]):
            _sync(device)
            t0 = time.perf_counter()
            losses = trainer.step(mr, ct)
            _sync(device)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
        if not all(math.isfinite(v) for v in losses.values()):
            raise RuntimeError(f"non-finite losses: {losses}")
    out: dict[str, Any] = {"times_s": times, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["max_allocated_bytes"] = torch.cuda.max_memory_allocated(device) - allocated_before
        out["max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    else:
        out["peak_rss_increase_bytes"] = _peak_rss_bytes() - rss_before
    return out


def generator_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Forward + backward of the plain reference generator and of mrct's, interleaved."""
    import torch

    from mrct.networks import ResnetGenerator
    from mrct.training.config import load_train_config

    device = torch.device(spec["device"])
    gen_cfg = load_train_config(CONFIGS / "paper_3d.yaml").model.generator
    torch.manual_seed(0)
    models = {
        "plain": plain_generator(gen_cfg.ngf, gen_cfg.n_residual_blocks).to(device),
        "mrct": ResnetGenerator(gen_cfg).to(device),
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    if counts["plain"] != counts["mrct"]:
        raise RuntimeError(f"the reference is not the same architecture: parameters {counts}")
    x, _ = _inputs(spec["size"], device)

    def fwd_bwd(model: Any) -> float:
        _sync(device)
        t0 = time.perf_counter()
        model(x).abs().mean().backward()
        _sync(device)
        dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        return dt

    for model in models.values():  # warm-up
        fwd_bwd(model)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(spec["repeats"]):
        for k, model in models.items():
            times[k].append(fwd_bwd(model))
    return {"times_s": times, "parameters": counts["mrct"], "threads": torch.get_num_threads()}


def _spec(text: str) -> dict[str, Any]:
    """argparse ``type=``: the JSON object ``run_worker`` passes."""
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err})") from None
    if not isinstance(spec, dict) or spec.get("kind") not in WORKERS:
        raise argparse.ArgumentTypeError(
            f'not a {{"kind": {" or ".join(map(json.dumps, WORKERS))}, ...}} object'
        )
    return spec


WORKERS = {"iteration": iteration_worker, "generator": generator_worker}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", type=_spec, help="one configuration, as JSON (what run_worker passes)")
    spec = parser.parse_args().spec
    print(RESULT + json.dumps(WORKERS[spec["kind"]](spec)))


if __name__ == "__main__":
    main()
