"""bf16 inference must agree with fp32 on real heads: it is what ``--precision auto`` picks on
CPUs with native bf16 (mrct.runtime), so its error is checked here, in HU, on held-out IXI MRs.

Where the CPU lacks native bf16, oneDNN emulates it: one head then takes about 9 minutes with the
bundled model (against seconds with AMX), and ``auto`` never picks bf16 there, so the check runs
only where it describes what users get. The arithmetic itself is checked on every machine with a
tiny package in test_inference.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrct.inference import Translator
from mrct.io import read_volume
from mrct.metrics import mr_head_mask, slab_voxels
from mrct.runtime import cpu_has_native_bf16
from mrct.volume import Modality

MAX_MAE_HU = 5.0
HEADS = ("IXI034", "IXI012")  # IXI034 is held out from the bundled model; IXI012 was trained on


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU emulates bf16 (no AMX or AVX-512-BF16)")
@pytest.mark.parametrize("head", HEADS)
def test_bf16_matches_fp32_within_5_hu_on_real_heads(shared_data: Path, head: str) -> None:
    src = next((shared_data / "mr" / "ixi_t1_2mm").glob(f"{head}*.nii.gz"))
    volume = read_volume(src)
    fp32 = Translator.from_package(None, "cpu", precision="fp32")
    bf16 = Translator.from_package(None, "cpu", precision="bf16")
    prepared = fp32.prepare(volume, Modality.CT)  # one preprocessing for both: only the model differs
    reference = fp32.finish(prepared, fp32.run(prepared)).volume.array.astype(np.float32)
    fast = bf16.finish(prepared, bf16.run(prepared)).volume.array.astype(np.float32)
    slab = prepared.slabs[0].record.slab
    in_slab = slab_voxels(volume, slab.superior_mm, slab.inferior_mm)
    head_mask = mr_head_mask(volume) & in_slab
    error = np.abs(fast - reference)
    assert head_mask.sum() * np.prod(volume.spacing) / 1000 > 500  # mL in the slab: a head, not a sliver
    assert error[head_mask].mean() < MAX_MAE_HU, f"MAE in the head {error[head_mask].mean():.2f} HU"
    assert error[in_slab].mean() < MAX_MAE_HU
    assert np.percentile(error[head_mask], 99) < 50  # no region is translated differently


def test_bf16_asked_for_on_a_cpu_that_emulates_it_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Emulated bf16 ran 400 s against 7 s in fp32, silently; --precision bf16 is obeyed but
    says why it will be slow. ``auto`` keeps fp32 there and says nothing."""
    import torch

    from mrct import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert "emulated" in caplog.text and "slower than fp32" in caplog.text
    caplog.clear()
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert caplog.text == ""
