"""Compressed DICOM pixel data: JPEG (encoded by dcmtk, independent of mrct), JPEG 2000 and RLE.

python-gdcm (a dependency) decodes JPEG baseline, JPEG lossless, JPEG-LS and
JPEG 2000; pydicom decodes RLE itself. 12-bit JPEG Extended is beyond GDCM: the
error names the transfer syntax (pylibjpeg-libjpeg, GPL, decodes it when installed).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from mrct.errors import ReadError
from mrct.io import read_volume
from tests.dicom_factory import write_series
from tests.external_tools import require


@pytest.fixture
def plain_series(tmp_path: Path) -> Path:
    """An uncompressed oblique CT (stored unsigned 16-bit, intercept -1024)."""
    return write_series(tmp_path / "plain", shape=(40, 48, 8), oblique_deg=(8.0, -5.0)).folder


def _encode(src: Path, dst: Path, tool: str, *options: str) -> Path:
    require(tool)
    dst.mkdir()
    for f in sorted(src.glob("*.dcm")):
        res = subprocess.run([tool, *options, str(f), str(dst / f.name)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    return dst


@pytest.mark.tools
@pytest.mark.parametrize(
    ("tool", "options", "syntax"),
    [
        ("dcmcjpeg", (), "1.2.840.10008.1.2.4.70"),  # JPEG lossless, first-order prediction
        ("dcmcjpls", (), "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    ],
)
def test_lossless_jpeg_reads_exactly(
    plain_series: Path, tmp_path: Path, tool: str, options: tuple[str, ...], syntax: str
) -> None:
    packed = _encode(plain_series, tmp_path / "packed", tool, *options)
    assert str(pydicom.dcmread(next(packed.iterdir())).file_meta.TransferSyntaxUID) == syntax
    plain, decoded = read_volume(plain_series), read_volume(packed)
    np.testing.assert_array_equal(decoded.array, plain.array)
    np.testing.assert_allclose(decoded.affine, plain.affine, atol=1e-6)


@pytest.mark.tools
def test_baseline_jpeg_reads_within_its_quantisation(plain_series: Path, tmp_path: Path) -> None:
    # dcmcjpeg squeezes 16-bit values into 8 bits and records the RescaleSlope it used.
    packed = _encode(plain_series, tmp_path / "packed", "dcmcjpeg", "+eb")
    ds = pydicom.dcmread(next(packed.iterdir()))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50" and ds.BitsStored == 8
    plain, decoded = read_volume(plain_series), read_volume(packed)
    np.testing.assert_allclose(decoded.affine, plain.affine, atol=1e-6)
    error = np.abs(decoded.array.astype(np.float64) - plain.array)
    assert error.mean() < float(ds.RescaleSlope) and error.max() < 8 * float(ds.RescaleSlope)


@pytest.mark.tools
def test_12_bit_jpeg_extended_decodes_or_names_its_syntax(plain_series: Path, tmp_path: Path) -> None:
    packed = _encode(plain_series, tmp_path / "packed", "dcmcjpeg", "+ee")
    try:
        decoded = read_volume(packed)
    except ReadError as err:
        assert "JPEG Extended" in str(err) and "1.2.840.10008.1.2.4.51" in str(err)
    else:  # a decoder that handles 12 bits is installed
        assert decoded.shape == read_volume(plain_series).shape


def test_jpeg_2000_reads_exactly(plain_series: Path, tmp_path: Path) -> None:
    import gdcm  # python-gdcm encodes it too; dcmtk has no JPEG 2000 codec

    packed = tmp_path / "j2k"
    packed.mkdir()
    for f in plain_series.glob("*.dcm"):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(f))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEG2000Lossless))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(packed / f.name))
        assert writer.Write()
    assert pydicom.dcmread(next(packed.iterdir())).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    np.testing.assert_array_equal(read_volume(packed).array, read_volume(plain_series).array)


def test_rle_reads_exactly(plain_series: Path, tmp_path: Path) -> None:
    packed = tmp_path / "rle"
    packed.mkdir()
    for f in plain_series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(packed / f.name)
    np.testing.assert_array_equal(read_volume(packed).array, read_volume(plain_series).array)


@pytest.mark.tools
def test_a_damaged_jpeg_is_one_error_line(plain_series: Path, tmp_path: Path) -> None:
    """From a hunt: GDCM's libjpeg printed its own lines ("Corrupt JPEG data: premature end of data
    segment", "Unsupported marker type 0x9a") on the process's stderr above mrct's error. What the
    decoder says now becomes the error's reason, and nothing else is printed."""
    packed = _encode(plain_series, tmp_path / "packed", "dcmcjpeg", "+eb")
    damaged = sorted(packed.glob("*.dcm"))[3]
    data = bytearray(damaged.read_bytes())
    scan = data.find(b"\xff\xda")  # the JPEG stream's start of scan
    data[scan + 20 : scan + 60] = b"\xff" * 40
    damaged.write_bytes(bytes(data))
    result = subprocess.run(["mrct", "info", str(packed)], capture_output=True, text=True)
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"error: {damaged}: cannot decode the pixel data (transfer syntax JPEG Baseline (Process 1) "
        "(1.2.840.10008.1.2.4.50)): Corrupt JPEG data: premature end of data segment"
    ], result.stderr


def test_what_decoders_print_is_judged_and_the_rest_printed_after_all(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The capture takes the whole process's stderr while decoding. libjpeg's lines become the
    error's reason, and a damaged stream a decoder fills in with grey (libjpeg warns and returns)
    is an error too; whatever else was written meanwhile (a batch's other thread: a log line, the
    progress bar) is printed after all, never taken for the reason (from a review)."""
    import os

    from mrct.io import native_stderr
    from mrct.io.dicom_pixels import decode

    printed: list[str] = []
    with pytest.raises(RuntimeError), native_stderr.caught(printed):
        os.write(2, b"\r 50%|##   | 1/2 [00:01]WARNING p2/t1.nii.gz: no chin outline\n")
        raise RuntimeError("gdcm: failed")
    assert printed == ["\r 50%|##   | 1/2 [00:01]WARNING p2/t1.nii.gz: no chin outline\n"]
    assert capfd.readouterr().err == ""
    said, rest = native_stderr.decoder_lines("a bar\rCorrupt JPEG data: bad Huffman code\nother\n")
    assert said == ["Corrupt JPEG data: bad Huffman code"] and rest == "a bar\rother\n"
    bar = "\r 30%|###  | 3/10 [00:00<00:00, 29.6series/s]"  # no line break before libjpeg's words
    said, rest = native_stderr.decoder_lines(f"{bar}Corrupt JPEG data: premature end of data segment\n")
    assert said == ["Corrupt JPEG data: premature end of data segment"] and rest == bar

    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit

    def decoded_with(printed: bytes, fails: bool = False) -> np.ndarray:
        def pixel_array(_self: object) -> np.ndarray:
            os.write(2, printed)
            if fails:
                raise RuntimeError("Unable to decode as exceptions were raised by all available plugins")
            return np.zeros((2, 2), np.uint8)

        monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(pixel_array))
        return decode(ds, tmp_path / "x.dcm")

    damaged = r"x\.dcm: cannot decode .*: Corrupt JPEG data: premature end of data segment$"
    for fails in (True, False):  # the decoder raises, or returns a made-up image
        with pytest.raises(ReadError, match=damaged):
            decoded_with(b"WARNING elsewhere\nCorrupt JPEG data: premature end of data segment\n", fails)
        assert capfd.readouterr().err == "WARNING elsewhere\n"
    assert decoded_with(b"Corrupt JPEG data: 1 extraneous bytes before marker 0xd9\n").shape == (2, 2)
    assert capfd.readouterr().err == "Corrupt JPEG data: 1 extraneous bytes before marker 0xd9\n"


def test_a_signals_last_line_is_not_swallowed_by_a_decode_under_way(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """From a review: a second Ctrl-C while a batch thread decoded wrote "interrupted again" into
    the capture, and the process ended at once: nothing was printed."""
    from mrct.cli_signals import _say
    from mrct.io import native_stderr

    printed: list[str] = []
    with native_stderr.caught(printed):
        _say(b"error: interrupted again\n")
    assert printed == [""] and capfd.readouterr().err == "error: interrupted again\n"
