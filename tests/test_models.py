"""Model packages: write, load, verify, and refuse every kind of tampering."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from mrct.errors import ModelError, OutputExistsError, WriteError
from mrct.models import (
    find_package,
    list_packages,
    load_package,
    render_card,
    write_package,
)
from mrct.networks import GeneratorConfig, build_generator
from mrct.preprocessing.config import GridConfig, PreprocessConfig

TINY = GeneratorConfig(ngf=2, n_residual_blocks=1)
PREP = PreprocessConfig(grid=GridConfig(depth=4, height=8, width=8))
INTENSITY = {
    "ct": {"map": "linear", "hu_range": [-1024, 3071]},
    "mr": {"map": "percentile", "range": [0.5, 99.5]},
}


def tiny_states(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    return {d: build_generator(TINY).state_dict() for d in ("mr_to_ct", "ct_to_mr")}


def write(out: Path, states: dict[str, dict[str, torch.Tensor]] | None = None, **kw: Any) -> Path:
    args: dict[str, Any] = {
        "name": "tiny",
        "generators": states or tiny_states(),
        "generator_config": TINY,
        "preprocessing": PREP,
        "intensity": INTENSITY,
        "training": {"data": "synthetic phantoms", "iterations": 0, "config": "test"},
        "metrics": {"mae_hu": 123.4},
        "license": "CC-BY-4.0",
        "description": "A tiny test model.",
    }
    return write_package(out, **{**args, **kw})


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".mrct-tmp-" in p.name or ".mrct-old-" in p.name]


def edit_manifest(folder: Path, change: Any) -> None:
    manifest = json.loads((folder / "model.json").read_text())
    change(manifest)
    (folder / "model.json").write_text(json.dumps(manifest))


def replace_weights(folder: Path, direction: str, state: dict[str, torch.Tensor]) -> None:
    """Swap in other weights and update the manifest, as a careless hand edit would."""
    import hashlib

    file = folder / f"generator_{direction}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    data = file.read_bytes()
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    edit_manifest(folder, lambda m: m["files"].__setitem__(file.name, entry))


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return write(tmp_path / "models" / "tiny")


def test_import_does_not_load_torch() -> None:
    code = "import sys, mrct.models; print(sorted({'torch', 'safetensors', 'monai'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_loading_weights_does_not_import_torchs_compiler(package: Path) -> None:
    """The shape check builds the network on the meta device; drawing its initial weights there
    imported torch._dynamo, a second or more of every translate run, and its temporary folder."""
    code = (
        "import sys; from mrct.models import load_package; "
        f"load_package({str(package)!r}).load_generator('mr_to_ct'); print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_round_trip_gives_the_same_outputs(tmp_path: Path, package: Path) -> None:
    states = tiny_states()
    assert sorted(p.name for p in package.iterdir()) == [
        "README.md",
        "generator_ct_to_mr.safetensors",
        "generator_mr_to_ct.safetensors",
        "model.json",
    ]
    assert leftovers(package.parent) == []
    pkg = load_package(package)
    assert pkg.name == "tiny"
    assert pkg.generator_config == TINY
    assert pkg.preprocessing == PREP
    assert pkg.manifest["intensity"] == INTENSITY
    assert pkg.manifest["architecture"]["parameters"] == sum(v.numel() for v in states["mr_to_ct"].values())
    x = torch.rand(1, 1, 4, 8, 8) * 2 - 1
    for direction in ("mr_to_ct", "ct_to_mr"):
        reference = build_generator(TINY)
        reference.load_state_dict(states[direction])
        net = pkg.load_generator(direction)
        assert not net.training
        with torch.no_grad():
            assert torch.equal(net(x), reference.eval()(x))
    assert load_package(package).checksum == pkg.checksum  # stable


def test_manifest_and_card(package: Path) -> None:
    m = json.loads((package / "model.json").read_text())
    assert (m["format"], m["format_version"]) == ("mrct-model", 1)
    assert m["created"].endswith("Z")
    assert m["directions"] == {
        "mr_to_ct": "generator_mr_to_ct.safetensors",
        "ct_to_mr": "generator_ct_to_mr.safetensors",
    }
    for name, entry in m["files"].items():
        assert entry["bytes"] == (package / name).stat().st_size
    card = (package / "README.md").read_text()
    assert card == render_card(m)
    for text in ("# tiny", "not for diagnosis", "## Limitations", "synthetic phantoms", "`ct.hu_range`"):
        assert text in card


def test_loader_never_unpickles(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling called")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    load_package(package).load_generator("mr_to_ct")


def refuses(folder: Path, *fragments: str) -> ModelError:
    with pytest.raises(ModelError) as info:
        load_package(folder)
    message = str(info.value)
    assert info.value.exit_code == 7 and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return info.value


def test_flipped_byte_is_refused(package: Path) -> None:
    file = package / "generator_mr_to_ct.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    refuses(package, "generator_mr_to_ct.safetensors", "sha256 mismatch")


def test_truncated_file_is_refused(package: Path) -> None:
    file = package / "generator_ct_to_mr.safetensors"
    file.write_bytes(file.read_bytes()[:-3])
    refuses(package, "generator_ct_to_mr.safetensors", "size is")


@pytest.mark.parametrize("name", ["evil.pkl", "weights.pt", "model.pth", "last.ckpt", "arr.npy"])
def test_pickle_capable_files_are_refused(package: Path, name: str) -> None:
    (package / name).write_bytes(pickle.dumps({"x": 1}))
    refuses(package, name, "pickle-capable")


def test_a_package_without_its_card_is_refused(package: Path) -> None:
    """From a hunt: ``models info`` said "verified: ok" for a package whose README.md was gone;
    a package describes itself, and its card says what it is not for."""
    (package / "README.md").unlink()
    refuses(package, "README.md", "model card missing")


def test_unlisted_file_is_refused(package: Path) -> None:
    (package / "notes.txt").write_text("hello")
    refuses(package, "notes.txt", "not listed in model.json")


def test_names_escaping_the_folder_are_refused(package: Path) -> None:
    shutil.copy(package / "generator_mr_to_ct.safetensors", package.parent / "x.safetensors")
    for name in ("../x.safetensors", "/tmp/x.safetensors", "..\\x.safetensors"):

        def point(m: dict[str, Any], name: str = name) -> None:
            m["files"][name] = m["files"].pop(m["directions"]["mr_to_ct"])
            m["directions"]["mr_to_ct"] = name

        backup = (package / "model.json").read_text()
        edit_manifest(package, point)
        refuses(package, "model.json", "escapes the model folder", name.replace("\\", "\\\\"))
        (package / "model.json").write_text(backup)


def test_symlink_outside_is_refused(package: Path) -> None:
    file = package / "generator_mr_to_ct.safetensors"
    outside = package.parent / "elsewhere.safetensors"
    file.rename(outside)
    os.symlink(outside, file)  # same bytes, so only the location gives it away
    refuses(package, "generator_mr_to_ct.safetensors", "symlink points outside")


def test_symlink_loop_is_refused(package: Path) -> None:
    file = package / "generator_mr_to_ct.safetensors"
    file.unlink()
    os.symlink(file.name, file)
    refuses(package, "generator_mr_to_ct.safetensors", "not a regular file")


def test_missing_weight_file_is_refused(package: Path) -> None:
    (package / "generator_ct_to_mr.safetensors").unlink()
    refuses(package, "generator_ct_to_mr.safetensors", "missing")


def test_missing_manifest_is_refused(package: Path, tmp_path: Path) -> None:
    (package / "model.json").unlink()
    refuses(package, "model.json is missing")
    refuses(tmp_path / "nowhere", "no such directory")


def test_bad_json_is_refused(package: Path) -> None:
    (package / "model.json").write_text('{"format": "mrct-model",')
    refuses(package, "model.json", "not valid JSON")
    (package / "model.json").write_text('{"format": "mrct-model", "format": "x"}')
    refuses(package, "duplicate keys: format")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m.__setitem__("format_version", 2), "format_version 2 is not supported"),
        (lambda m: m.__setitem__("format_version", "1"), "must be the integer 1, got '1' (a str)"),
        (lambda m: m.__setitem__("format", "bundle"), "format is 'bundle'"),
        (lambda m: m.pop("license"), "missing keys: license"),
        (lambda m: m["directions"].__setitem__("pet_to_ct", "x"), "unknown direction 'pet_to_ct'"),
        (lambda m: m["files"].__setitem__("w.pt", {"sha256": "0" * 64, "bytes": 1}), "'w.pt' is not .safet"),
        (lambda m: m["architecture"]["generator"].__setitem__("ngff", 2), "architecture.generator.ngff"),
        # From a hunt: both were "unexpected TypeError" (exit 70), and stopped mrct models list.
        (lambda m: m["directions"].__setitem__("mr_to_ct", ["x"]), "directions.mr_to_ct must name a file"),
        (lambda m: m["architecture"].__setitem__("parameters", "abc"), "architecture.parameters must be"),
    ],
)
def test_bad_manifest_is_refused(package: Path, change: Any, fragment: str) -> None:
    edit_manifest(package, change)
    refuses(package, "model.json", fragment)


def test_weights_that_do_not_fit_are_refused(package: Path) -> None:
    state = tiny_states()["mr_to_ct"]
    missing = {k: v for k, v in state.items() if k != "tail.1.conv.bias"}
    replace_weights(package, "mr_to_ct", missing)
    with pytest.raises(ModelError, match=r"mr_to_ct\.safetensors: .*missing key tail\.1\.conv\.bias"):
        load_package(package).load_generator("mr_to_ct")
    wrong = {**state, "tail.1.conv.bias": torch.zeros(3)}
    replace_weights(package, "ct_to_mr", wrong)
    with pytest.raises(ModelError, match=r"wrong shape for tail\.1\.conv\.bias \(3,\), expected \(1,\)"):
        load_package(package).load_generator("ct_to_mr")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [("ngf=100000", "wrong shape for"), ("n_residual_blocks=100000", "100000 residual blocks, but the")],
)
def test_an_architecture_far_larger_than_its_weights_is_refused_before_it_is_built(
    change: str, fragment: str
) -> None:
    """From a hunt: a model.json edited to ngf 100000 (or 100000 blocks) built the network
    before comparing shapes, and exhausted memory (exit 70) instead of exit 7. Run under a
    3 GB address-space limit, so the old behaviour fails instead of swapping."""
    code = (
        "import dataclasses, resource, torch\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from mrct.errors import ModelError\n"
        "from mrct.models import _fit_weights\n"
        "from mrct.networks import GeneratorConfig, build_generator\n"
        "small = GeneratorConfig(ngf=2, n_residual_blocks=1)\n"
        "state = build_generator(small).state_dict()\n"
        f"try:\n    _fit_weights(dataclasses.replace(small, {change}), state, 'w')\n"
        "except ModelError as err:\n    print(err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and fragment in proc.stdout, proc.stdout + proc.stderr


def test_unknown_direction_is_refused(package: Path) -> None:
    with pytest.raises(ModelError, match="unknown direction 'mr_to_pet'"):
        load_package(package).load_generator("mr_to_pet")


def test_file_changed_after_loading_is_refused(package: Path) -> None:
    pkg = load_package(package)
    replace_weights(package, "mr_to_ct", tiny_states(seed=1)["mr_to_ct"])
    with pytest.raises(ModelError, match=r"size is|sha256 mismatch"):
        pkg.load_generator("mr_to_ct")


def test_write_refuses_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    states = tiny_states()
    bad_shape = {**states, "mr_to_ct": {**states["mr_to_ct"], "tail.1.conv.bias": torch.zeros(2)}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"generators": bad_shape}, "wrong shape for tail.1.conv.bias"),
        ({"generators": {"mr_to_pet": states["mr_to_ct"]}}, "unknown or no directions"),
        ({"metrics": {"mae": float("nan")}}, "metrics is not plain JSON"),
        ({"intensity": {"ct": object()}}, "intensity is not plain JSON"),
        ({"name": "../up"}, "name '../up'"),
        ({"preprocessing": {"grid": {"depht": 3}}}, "grid.depht: unknown key"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(ModelError) as info:
            write(tmp_path / "out", **kwargs)
        assert fragment in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = write(tmp_path / "tiny")
    first = load_package(out).checksum
    with pytest.raises(OutputExistsError):
        write(out)
    assert load_package(out).checksum == first
    write(out, tiny_states(seed=1), overwrite=True)
    assert load_package(out).checksum != first
    assert leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["tiny"]

    # A folder holding anything export does not write (a mistaken -o ~/models) is never replaced.
    (out / "train.log").write_text("mine\n")
    with pytest.raises(OutputExistsError, match=r"'train\.log'"):
        write(out, tiny_states(seed=2), overwrite=True)
    assert (out / "train.log").exists()
    (out / "train.log").unlink()
    readme = tmp_path / "notes"  # a folder holding only a README of the user's: not a package
    readme.mkdir()
    (readme / "README.md").write_text("mine\n")
    with pytest.raises(OutputExistsError, match=r"without model\.json"):
        write(readme, overwrite=True)
    assert (readme / "README.md").read_text() == "mine\n"
    shutil.rmtree(readme)

    # A failure half-way through leaves the previous package intact and no temp folder.
    second = load_package(out).checksum

    def broken(manifest: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr("mrct.models.render_card", broken)
    with pytest.raises(WriteError, match="disk full"):
        write(out, tiny_states(seed=2), overwrite=True)
    assert load_package(out).checksum == second
    assert leftovers(tmp_path) == []


def test_find_and_list(tmp_path: Path, package: Path) -> None:
    models = package.parent
    assert find_package(package, []) == package
    assert find_package("tiny", [tmp_path / "absent", models]) == models / "tiny"
    (models / "broken").mkdir()
    (models / "broken" / "model.json").write_text("{")
    (models / "not-a-package").mkdir()
    with pytest.raises(ModelError, match=r"unknown model 'huge' \(available: broken, tiny;"):
        find_package("huge", [models])
    with pytest.raises(ModelError, match=r"unknown model 'tiny ' \(available"):  # a typo lists the names
        find_package("tiny ", [models])
    with pytest.raises(ModelError, match="no such model folder"):
        find_package(tmp_path / "gone" / "tiny", [models])
    summaries = {s.path.name: s for s in list_packages([models])}
    assert sorted(summaries) == ["broken", "tiny"]
    assert summaries["tiny"].directions == ("mr_to_ct", "ct_to_mr") and summaries["tiny"].problem is None
    assert summaries["broken"].problem is not None and "not valid JSON" in summaries["broken"].problem


def test_a_huge_or_unreadable_manifest_is_a_problem_not_a_crash(
    tmp_path: Path, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a hunt: a 4 GB model.json was read whole (MemoryError, exit 70), and one package
    whose model.json could not be read stopped mrct models list (PermissionError, exit 70)."""
    with (package / "model.json").open("r+b") as f:
        f.truncate(64 << 20)
    refuses(package, "model.json is 67108864 bytes")
    models = tmp_path / "more"
    shutil.copytree(package.parent, models)
    (models / "tiny" / "model.json").write_text("{}")
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "model.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    (summary,) = list_packages([models])
    assert summary.problem is not None and "cannot read model.json (Permission denied)" in summary.problem


def test_swapped_or_missing_directions_are_refused(package: Path) -> None:
    """Both generators have the same shapes, so swapped directions loaded and ran backwards; and
    a package listing none was "verified: ok" until translate found no model."""
    manifest = json.loads((package / "model.json").read_text())
    directions = manifest["directions"]
    swapped = {"mr_to_ct": directions["ct_to_mr"], "ct_to_mr": directions["mr_to_ct"]}
    (package / "model.json").write_text(json.dumps({**manifest, "directions": swapped}))
    with pytest.raises(ModelError, match=r"holds the ct_to_mr generator, but model\.json lists it as mr_"):
        load_package(package).load_generator("mr_to_ct")
    (package / "model.json").write_text(json.dumps({**manifest, "directions": {}}))
    refuses(package, "directions lists no generator")


def test_a_package_is_found_by_the_name_models_list_shows(tmp_path: Path) -> None:
    """From a CLI walk: `mrct models list` showed an exported package by its name ("my-model",
    export --name) and `models info my-model` answered "unknown model 'my-model' (available:
    pkg1)"; the folder's name still comes first, and a name two packages share is refused."""
    from tests.model_fixtures import write_tiny_model

    models = tmp_path / "models"
    write_tiny_model(models / "pkg1", name="my-model")
    assert [s.name for s in list_packages([models])] == ["my-model"]
    assert find_package("my-model", [models]) == models / "pkg1"
    assert find_package("pkg1", [models]) == models / "pkg1"
    write_tiny_model(models / "pkg2", name="my-model")
    with pytest.raises(ModelError, match=r"several packages are named 'my-model' \(.*pkg1, .*pkg2\); give"):
        find_package("my-model", [models])
    with pytest.raises(ModelError, match=r"unknown model 'other' \(available: my-model, pkg1, pkg2;"):
        find_package("other", [models])
    # From review: the search folders in order, as for a folder's name (the first one wins).
    first = tmp_path / "first"
    write_tiny_model(first / "mine", name="my-model")
    assert find_package("my-model", [first, models]) == first / "mine"
