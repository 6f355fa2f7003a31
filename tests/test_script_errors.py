"""The scripts in pipelines/ and benchmarks/ on bad arguments: a non-zero exit code and one line
naming the argument or file, never a traceback; and a run whose work failed does not exit 0.

Every script runs as a subprocess, as a user runs it, and stops at its argument checks: nothing
here trains or translates (the few that load a model stop before its first scan).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def _run(script: str, *args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *names: object) -> str:
    """The failure's last stderr line, checked: ``error:`` (or argparse's ``prog: error:``),
    naming each of ``names``; non-zero exit; no traceback anywhere."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") or ": error: " in last, proc.stderr
    for name in names:
        assert str(name) in last, proc.stderr
    return last


def _manifest(root: Path, grid: dict[str, Any], preprocessing: dict[str, Any] | None = None) -> Path:
    """A prepared set: MR a (train), MR b (test), CT c (train), arrays on ``grid`` (all -1,
    written sparse: only their headers are read here)."""
    scans = []
    shape = (grid["depth"], grid["height"], grid["width"])
    for domain, scan_id in (("mr", "a"), ("mr", "b"), ("ct", "c")):
        rel = f"{domain}/{scan_id}.npy"
        (root / domain).mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(root / rel, mode="w+", dtype=np.float32, shape=shape).flush()
        crop = {"superior_mm": 60.0, "inferior_mm": -60.0}
        entry = {"domain": domain, "id": scan_id, "status": "ok", "files": {"image": rel}, "crop": crop}
        scans.append({**entry, "source": str(root / rel)})
    split = {"mr": {"train": ["a"], "test": ["b"]}, "ct": {"train": ["c"], "test": []}}
    config = {"grid": grid} if preprocessing is None else preprocessing
    manifest = {"format": "mrct-prepared-dataset", "config": config, "scans": scans, "split": split}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


SMALL_GRID = {"depth": 8, "height": 48, "width": 48, "inplane_mm": 1.0}


# ----------------------------------------------------------------------------- pipelines/


def test_evaluate_model_refuses_bad_arguments(tmp_path: Path) -> None:
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not a volume")
    out = tmp_path / "e.json"
    script = "pipelines/evaluate_model.py"
    _one_line_error(_run(script, "--model", "nonexist", "--mr", scan, "-o", out), "nonexist")
    _one_line_error(_run(script, "--model", "x", "--prepared", tmp_path / "nope", "-o", out), "nope")
    _one_line_error(
        _run(script, "--model", "x", "--mr", tmp_path / "no.nii.gz", "-o", out), "no.nii.gz", "--mr"
    )
    _one_line_error(_run(script, "--model", "x", "--limit", "-1", "-o", out), "--limit")
    _one_line_error(_run(script, "--model", "x", "-o", out), "nothing to evaluate")
    assert not out.exists()
    out.write_text("{}")  # from a training walk: a second run replaced a good evaluation
    _one_line_error(_run(script, "--model", "x", "-o", out), "exists; pass --overwrite to replace it")
    assert out.read_text() == "{}"


def test_evaluate_model_exits_non_zero_when_a_scan_fails_to_run(tmp_path: Path) -> None:
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not a volume")
    out = tmp_path / "e.json"
    proc = _run("pipelines/evaluate_model.py", "--model", "mrct-head-cpu-small", "--mr", scan, "-o", out)
    assert proc.returncode == 1
    _one_line_error(proc, "1 of 1 scans failed to run", scan)
    assert "0/1 scans pass (1 failed to run)" in proc.stdout  # the table is still written
    assert json.loads(out.read_text())["summary"]["MR -> synthetic CT"]["failed_to_run"] == 1


def test_pack_prepared_names_a_missing_set(tmp_path: Path) -> None:
    proc = _run("pipelines/pack_prepared.py", "pack", tmp_path / "nonexist", tmp_path / "out")
    _one_line_error(proc, tmp_path / "nonexist", "manifest.json")
    assert not (tmp_path / "out").exists()


def test_build_head_template_names_a_missing_or_empty_folder(tmp_path: Path) -> None:
    script = "pipelines/build_head_template.py"
    _one_line_error(_run(script, tmp_path / "nonexist", "-o", tmp_path / "x"), tmp_path / "nonexist")
    _one_line_error(_run(script, tmp_path, "-o", tmp_path / "x"), tmp_path, "*.nii.gz")


def test_compare_heads_flicker_refuses_bad_arguments(tmp_path: Path) -> None:
    prepared = _manifest(tmp_path / "prepared", SMALL_GRID)
    common = ["--model-2d", "models/mrct-head-cpu-small", "-o", tmp_path / "out"]
    script = "pipelines/compare_heads_flicker.py"
    _one_line_error(_run(script, "--prepared", tmp_path / "nope", *common), tmp_path / "nope")
    _one_line_error(_run(script, "--prepared", prepared, "--cases", "0", *common), "--cases")
    proc = _run(script, "--prepared", prepared, "--model-3d", "nonexist", *common)
    _one_line_error(proc, "unknown model 'nonexist'")
    both = ["--train-iterations", "5", "--train-minutes", "1"]
    _one_line_error(_run(script, "--prepared", prepared, *both, *common), "not both")


def test_compare_heads_flicker_refuses_a_model_on_another_grid(tmp_path: Path) -> None:
    prepared = _manifest(tmp_path / "prepared", SMALL_GRID)
    proc = _run(
        "pipelines/compare_heads_flicker.py",
        *("--prepared", prepared, "--model-3d", "models/mrct-head-cpu-small"),
        *("--model-2d", "models/mrct-head-cpu-small", "-o", tmp_path / "out"),
    )
    _one_line_error(proc, "mrct-head-cpu-small", "30x256x256", "8x48x48")
    assert not (tmp_path / "out").exists()


def test_compare_heads_flicker_resolves_paths_from_the_users_folder(tmp_path: Path) -> None:
    """The export ran in the repository with the user's relative --run: "run_h2d: not a training
    run folder" for a folder that was there (training would have written into the repository)."""
    _manifest(tmp_path / "prepared", {"depth": 30, "height": 256, "width": 256, "inplane_mm": 1.0})
    (tmp_path / "run_h2d").mkdir()
    args = ["--prepared", "prepared", "--run", "run_h2d", "--model-2d", "new2d", "-o", "out"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "compare_heads_flicker.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert f"{tmp_path / 'run_h2d'}: not a training run folder" in proc.stderr, proc.stderr
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_reproduce_mnist_names_the_failed_step_without_a_traceback(tmp_path: Path) -> None:
    proc = _run("pipelines/reproduce_mnist.py", "--idx", tmp_path / "nonexist.gz", "-o", tmp_path / "out")
    last = _one_line_error(proc, "step build failed")
    assert last == "error: step build failed (exit 3)"
    assert f"{tmp_path / 'nonexist.gz'}: no such IDX file" in proc.stderr  # the step's own message
    proc = _run("pipelines/reproduce_mnist.py", "--idx", MNIST, "--size", "0", "-o", tmp_path / "out")
    _one_line_error(proc, "--size")


def _idx(path: Path, n: int = 12) -> Path:
    """An IDX image file of ``n`` 28 x 28 bars."""
    digits = np.zeros((n, 28, 28), np.uint8)
    digits[:, 6:22, 12:16] = 255
    path.write_bytes(
        b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in digits.shape) + digits.tobytes()
    )
    return path


def test_reproduce_mnist_refuses_a_grid_too_small_for_a_method_before_building(tmp_path: Path) -> None:
    """From a hunt: --size 16 --depth 8 built the data set, then failed at training ("patch
    grid would be (3, 0, 0)")."""
    args = ["--idx", _idx(tmp_path / "images"), "-o", tmp_path / "work", "--count", 6, "--depth", 8]
    proc = _run("pipelines/reproduce_mnist.py", *args, "--size", 16)
    last = _one_line_error(proc, "--size 16 --depth 8: mnist_3d: the prepared grid [8, 16, 16]")
    assert last.endswith("too small for the discriminator (n_layers 3): its patch grid would be (3, 0, 0)")
    assert proc.returncode == 2 and not (tmp_path / "work").exists()


def test_reproduce_mnist_refuses_a_work_folder_built_with_other_arguments(tmp_path: Path) -> None:
    """From a hunt: a rerun into a folder built with --count 6 --size 28 reused its data, models
    and predictions and labelled the table "20 volumes ... 8x32x32 ... seed 5"."""
    idx = _idx(tmp_path / "images")
    built = _run(
        "pipelines/volumetric_mnist.py", "--idx", idx, "-o", tmp_path / "work" / "vmnist", "--count", 6
    )
    assert built.returncode == 0, built.stderr
    common = ["--idx", idx, "-o", tmp_path / "work", "--depth", 30, "--iterations", 1]
    proc = _run("pipelines/reproduce_mnist.py", *common, "--count", 7, "--size", 32, "--seed", 5)
    last = _one_line_error(proc, tmp_path / "work" / "vmnist")
    assert last.endswith("built with --count 6, --size 84, --seed 0; give the same values, or a new -o")
    assert proc.returncode == 2 and not (tmp_path / "work" / "runs").exists()


def test_reproduce_mnist_resolves_paths_from_the_users_folder_and_keeps_other_files(
    tmp_path: Path,
) -> None:
    """--idx was resolved in the repository, where the steps run ("no such IDX file" for a file
    that was there); the ground-truth folder was deleted whole, a user's files with it."""
    (tmp_path / "not_idx.gz").write_bytes(b"PK\x03\x04" + bytes(40))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "reproduce_mnist.py"), "--idx", "not_idx.gz", "-o", "w"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert f"{tmp_path / 'not_idx.gz'}: not an IDX image file" in proc.stderr, proc.stderr
    spec = importlib.util.spec_from_file_location("rm", ROOT / "pipelines" / "reproduce_mnist.py")
    assert spec is not None and spec.loader is not None
    rm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rm)
    data = tmp_path / "data"
    for domain in ("mr", "ct"):
        (data / domain).mkdir(parents=True)
        (data / domain / "01.npy").write_bytes(b"x")
    rm.link_ground_truth(data, tmp_path / "gt", ["01"])
    rm.link_ground_truth(data, tmp_path / "gt", ["01"])  # its own links are replaced
    assert (tmp_path / "gt" / "ct" / "01.npy").read_bytes() == b"x"
    (tmp_path / "gt" / "mr" / "notes.txt").write_text("mine")
    from mrct.script_main import ScriptError

    with pytest.raises(ScriptError, match=r"notes\.txt: not a link this script made"):
        rm.link_ground_truth(data, tmp_path / "gt", ["01"])
    assert (tmp_path / "gt" / "mr" / "notes.txt").read_text() == "mine"


def test_reproduce_mnist_evaluates_only_the_predicted_test_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The training split's ground truth is never predicted: it is not in the evaluated folder,
    so no warning says it was left out."""
    from mrct.api import evaluate

    spec = importlib.util.spec_from_file_location(
        "reproduce_mnist", ROOT / "pipelines" / "reproduce_mnist.py"
    )
    assert spec is not None and spec.loader is not None
    mnist = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mnist)
    data, pred = tmp_path / "vmnist", tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    for domain in ("mr", "ct"):
        (data / domain).mkdir(parents=True)
        for i in ("train0", "train1", "test0"):
            np.save(data / domain / f"{i}.npy", rng.uniform(-1, 1, (4, 8, 8)).astype(np.float32))
    np.save(pred / "test0.npy", np.zeros((4, 8, 8), np.float32))
    mnist.link_ground_truth(data, tmp_path / "gt", ["test0"])
    mnist.link_ground_truth(data, tmp_path / "gt", ["test0"])  # a second run replaces the links
    assert sorted(p.name for p in (tmp_path / "gt" / "ct").iterdir()) == ["test0.npy"]
    with caplog.at_level("WARNING"):
        result = evaluate(pred, tmp_path / "gt" / "ct", tmp_path / "r.csv", metric="mnist-l2")
    assert len(result.rows) == 1 and not caplog.records


def test_train_within_budget_refuses_a_missing_config(tmp_path: Path) -> None:
    prepared = _manifest(tmp_path / "prepared", SMALL_GRID)
    proc = _run(
        "pipelines/train_within_budget.py",
        *("--data", prepared, "--configs", tmp_path / "nonexist.yaml", "--runs", tmp_path / "runs"),
        *("--seconds", "480", "--pack", tmp_path / "pack", "--device", "cpu"),
    )
    _one_line_error(proc, tmp_path / "nonexist.yaml")
    assert not (tmp_path / "pack").exists()


def test_train_within_budget_fails_when_the_probe_logs_nothing(tmp_path: Path) -> None:
    from mrct.config import to_dict
    from mrct.training.config import load_train_config

    config = ROOT / "configs" / "cpu_small.yaml"
    preprocessing = to_dict(load_train_config(config).preprocessing)
    prepared = _manifest(tmp_path / "prepared", preprocessing["grid"], preprocessing)
    proc = _run(
        "pipelines/train_within_budget.py",
        *("--data", prepared, "--configs", config, "--runs", tmp_path / "runs"),
        *("--seconds", "480", "--probe-seconds", "0.5", "--pack", tmp_path / "pack", "--device", "cpu"),
    )
    assert proc.returncode == 1
    _one_line_error(proc, "no config logged a rate", "cpu_small")
    assert "packed" not in proc.stdout


# ----------------------------------------------------------------------------- benchmarks/


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--config", "nonexist.yaml", "--data", "PREPARED"], ["nonexist.yaml"]),
        (["--config", "configs/cpu_small.yaml", "--data", "NOPE"], ["NOPE"]),
        (["--config", "c", "--data", "d", "--iterations", "-1"], ["--iterations"]),
        (["--config", "c", "--data", "d", "--workers", "-1"], ["--workers"]),
    ],
)
def test_train_feed_refuses_bad_arguments(tmp_path: Path, args: list[str], names: list[str]) -> None:
    prepared = _manifest(tmp_path / "prepared", SMALL_GRID)
    args = [str(prepared) if a == "PREPARED" else str(tmp_path / a) if a == "NOPE" else a for a in args]
    names = [str(tmp_path / n) if n == "NOPE" else n for n in names]
    _one_line_error(_run("benchmarks/train_feed.py", *args), *names)


@pytest.mark.parametrize(
    ("script", "args", "name"),
    [
        ("benchmarks/train.py", ["--repeats", "0", "-o", "OUT"], "--repeats"),
        ("benchmarks/train.py", ["--gpu-repeats", "x", "-o", "OUT"], "--gpu-repeats"),
        ("benchmarks/preprocess.py", ["--repeats", "0", "-o", "OUT"], "--repeats"),
        ("benchmarks/run.py", ["--models", "frob", "-o", "OUT"], "'frob'; known: bundled, paper"),
        ("benchmarks/run.py", ["--overlap-repeats", "-1", "-o", "OUT"], "--overlap-repeats"),
        ("benchmarks/train_workers.py", ["{"], "spec"),
    ],
)
def test_benchmarks_refuse_bad_arguments(tmp_path: Path, script: str, args: list[str], name: str) -> None:
    out = tmp_path / "out"
    _one_line_error(_run(script, *(out if a == "OUT" else a for a in args)), name)
    assert not out.exists()  # refused before measuring or writing anything


def test_train_workers_has_help() -> None:
    proc = _run("benchmarks/train_workers.py", "--help")
    assert proc.returncode == 0 and "mrct-benchmark-result" in proc.stdout, proc.stderr


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """benchmarks/ importable (its scripts import their siblings), and forgotten afterwards:
    modules named ``train`` or ``run`` must not stay in ``sys.modules`` for other tests."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    yield
    for name in set(sys.modules) - before:
        if str(ROOT / "benchmarks") in str(getattr(sys.modules[name], "__file__", "")):
            del sys.modules[name]


@pytest.mark.usefixtures("benchmarks")
def test_benchmark_failures_are_found_in_the_results() -> None:
    train = importlib.import_module("train")
    ok = {"label": "cpu_small", "size": [30, 128, 128], "times_s": [1.0]}
    failed = {"label": "cpu_small", "size": [30, 256, 256], "error": "exit 1: boom"}
    result = {"cpu": {"rows": [ok, failed], "reference": {"times_s": {}}}, "gpu": {"skipped": "no CUDA"}}
    assert train.failures(result) == ["cpu cpu_small 30×256×256: exit 1: boom"]
    assert train.failures({"cpu": {"rows": [ok], "reference": {}}, "gpu": {"skipped": "-"}}) == []

    run = importlib.import_module("run")
    result = {
        "train": {"cpu_small": {"error": "exit 1: boom"}, "gpu": {"skipped": "no CUDA"}},
        "models": {"bundled": {"translate": {"runs": [{"rc": 0}, {"rc": 3, "error": "bad"}]}}},
    }
    assert run.failures(result) == ["train cpu_small: exit 1: boom", "bundled translate: exit 3: bad"]


def test_pipelines_use_no_private_names_of_mrct() -> None:
    """pipelines/README.md promises the scripts use mrct's public names; build_head_template.py
    imported ``mrct.preprocessing.localise._anchor_lps``."""
    import ast

    private = []
    for script in sorted((ROOT / "pipelines").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mrct"):
                parts = (node.module or "").split(".") + [a.name for a in node.names]
                private += [
                    f"{script.name}: {node.module}.{p}"
                    for p in parts
                    if p.startswith("_") and not p.endswith("__")
                ]
    assert private == []


def test_evaluate_model_names_scans_without_suffix_and_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """--mr scans kept ".nii.gz" in their ids and preview names; named as the prepared set names
    them, a test-split scan also given with --mr had the same id and replaced its preview."""
    monkeypatch.syspath_prepend(str(ROOT / "pipelines"))
    evaluate_model = importlib.import_module("evaluate_model")
    scans = [("IXI034", Path("a"), None), ("IXI034", Path("b"), None), ("IXI051", Path("c"), None)]
    assert [s[0] for s in evaluate_model._unique_ids(scans)] == ["IXI034", "IXI034_2", "IXI051"]
    clash = [("a", Path("a"), None), ("a", Path("b"), None), ("a_2", Path("c"), None)]  # from review
    assert [s[0] for s in evaluate_model._unique_ids(clash)] == ["a", "a_2", "a_2_2"]
    del sys.modules["evaluate_model"]
