"""A corpus of broken and hostile inputs, built in the test (no patient data).

:data:`CORPUS` maps a case name to its builder (tests/bad_files.py,
tests/bad_dicom.py: each takes a scratch folder and returns the path to hand
to mrct) and a fragment the one-line error must contain. Every case fails at
read time (before any model is loaded), so it can go through ``info``,
``convert``, ``translate`` and ``batch`` alike. Cases that trip only below the
default memory limit name the limit they need in :data:`NEEDS_LIMIT` (the
CLI's ``--max-memory``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests import bad_dicom as dicom
from tests import bad_files as files
from tests.bad_files import good_nifti, good_series

__all__ = ["CORPUS", "NEEDS_LIMIT", "SPLIT_CASES", "Case", "good_nifti", "good_series"]


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    message: str  # a fragment of the one-line error (lower case)


CORPUS: dict[str, Case] = {
    "nifti truncated gz": Case(files.nifti_truncated_gz, "truncated"),
    "nifti corrupt gz": Case(files.nifti_corrupt_gz, "corrupt"),
    "nifti bad crc": Case(files.nifti_bad_crc, "corrupt"),
    "nifti truncated raw": Case(files.nifti_truncated_raw, "truncated"),
    "nifti impossible dims": Case(files.nifti_impossible_dims, "dimensions"),
    "nifti negative dim": Case(files.nifti_negative_dim, "dimensions"),
    "nifti zero pixdim": Case(files.nifti_zero_pixdim, "voxel size"),
    "nifti negative pixdim": Case(files.nifti_negative_pixdim, "voxel size"),
    "nifti huge dims": Case(files.nifti_huge_dims, "voxels"),
    "nifti2 absurd dims": Case(files.nifti2_absurd_dims, "voxels"),
    "nifti huge offset": Case(files.nifti_huge_offset, "offset"),
    "nifti bad datatype": Case(files.nifti_bad_datatype, "data type"),
    "nifti rgb": Case(files.nifti_rgb, "single-channel"),
    "nifti nan": Case(files.nifti_nan, "3 of 120 voxels are nan"),
    "nifti inf": Case(files.nifti_inf, "2 of 120 voxels are infinite"),
    "nifti singular affine": Case(files.nifti_singular_affine, "degenerate"),
    "text named nifti": Case(files.text_named_nifti, "not a nifti"),
    "plain nifti named gz": Case(files.plain_nifti_named_gz, "not gzip"),
    "dicom named nifti": Case(files.dicom_named_nifti, "dicom"),
    "nifti named mha": Case(files.nifti_named_mha, "nifti"),
    "nifti named dcm": Case(files.nifti_named_dcm, "nifti"),
    "mha truncated": Case(files.mha_truncated, "truncated"),
    "mha absurd dims": Case(files.mha_absurd_dims, "voxels"),
    "mha zero spacing": Case(files.mha_zero_spacing, "spacing"),
    "nhdr missing data": Case(files.nhdr_missing_data, "gone.raw"),
    "nhdr data in a pipe": Case(files.nhdr_data_in_a_pipe, "'pipe.raw' named by the header is not a regular"),
    "nhdr data from dev zero": Case(files.nhdr_data_from_dev_zero, "'/dev/zero' named by the header is not"),
    "nhdr list file missing": Case(files.nhdr_list_file_missing, "'s1.raw' named by the header is missing"),
    "mhd list short": Case(files.mhd_list_short, "list names 3 files, dimsize needs 5 slices"),
    "mhd pattern short": Case(files.mhd_pattern_short, "names 3 files, dimsize needs 5 slices"),
    "mhd slice missing": Case(files.mhd_slice_missing, "'gone.raw' named by the header is missing"),
    "mhd slice short": Case(files.mhd_slice_short, "slice file 's003.raw' is 7 bytes, one slice needs 24"),
    "mhd compressed slice cut": Case(files.mhd_compressed_slice_cut, "in the slice file 'z002.raw'"),
    "mhd pattern step zero": Case(files.mhd_pattern_step_zero, "step is 0"),
    "dicom missing iop": Case(dicom.dicom_missing_iop, "missing imageorientationpatient"),
    "dicom huge spacing": Case(dicom.dicom_huge_spacing, "transform is not finite"),  # it overflows
    "dicom huge positions": Case(dicom.dicom_huge_positions, "implausible"),
    "dicom skewed iop": Case(dicom.dicom_skewed_iop, "not perpendicular"),
    "dicom garbled iop": Case(dicom.dicom_garbled_iop, "imageorientationpatient"),
    "dicom nan iop": Case(dicom.dicom_nan_iop, "imageorientationpatient holds a value that is not a finite"),
    "dicom one inf iop": Case(
        dicom.dicom_one_inf_iop, "imageorientationpatient holds a value that is not a finite"
    ),
    "dicom one garbled iop": Case(
        dicom.dicom_one_garbled_iop, "imageorientationpatient is not a list of numbers"
    ),
    "dicom duplicate positions": Case(dicom.dicom_duplicate_positions, "share a position"),
    "dicom no pixel data": Case(dicom.dicom_no_pixel_data, "no pixel data"),
    "dicom short pixel data": Case(dicom.dicom_short_pixel_data, "pixel data"),
    "dicom truncated file": Case(dicom.dicom_truncated_file, "truncated"),
    "dicom truncated single file": Case(dicom.dicom_truncated_single_file, "truncated dicom image file"),
    "dicom folder of one cut file": Case(
        dicom.dicom_folder_of_one_truncated_file, "truncated dicom image file"
    ),
    "dicom unsupported syntax": Case(dicom.dicom_unsupported_syntax, "mpeg2"),
    "dicom private syntax": Case(dicom.dicom_private_syntax, "1.3.6.1.4.1.99999.1.2"),
    "dicom absurd size": Case(dicom.dicom_absurd_size, "65535 x 65535"),
    "dicom over limit": Case(dicom.dicom_over_limit, "limit"),
    "dicom nan slope": Case(dicom.dicom_nan_slope, "rescaleslope"),
    "dicom bad position": Case(dicom.dicom_bad_position, "imagepositionpatient"),
    "dicom deflate bomb": Case(dicom.dicom_deflate_bomb, "limit"),
    "folder without images": Case(dicom.dicomdir_only, "no dicom image files"),
    "zip declares huge": Case(files.zip_declares_huge, "zip"),
    "zip high ratio": Case(files.zip_high_ratio, "zip"),
    "zip lying sizes": Case(files.zip_lying_sizes, "zip"),
    "zip traversal": Case(files.zip_traversal, "escapes"),
    "text named zip": Case(files.text_named_zip, "not a readable zip"),
    "symlink loop": Case(files.symlink_loop, "symbolic link"),
    "broken symlink": Case(files.broken_symlink, "symbolic link"),
    "odd name nan": Case(files.odd_name_nan, "nan"),
    "nifti over limit": Case(files.nifti_over_limit, "limit"),
}

# Cases that trip only below the default memory limit: the CLI gets ``--max-memory`` this.
NEEDS_LIMIT = {
    "nifti over limit": "1G",
    "dicom over limit": "64M",
    "dicom deflate bomb": "16M",
    "zip high ratio": "32M",
}

# A series whose slices differ in size or orientation is split into stacks (as dcm2niix and
# 3D Slicer do); reading the folder then asks for --series, and `mrct info` lists the stacks.
SPLIT_CASES: dict[str, Callable[[Path], Path]] = {
    "mixed sizes": dicom.dicom_mixed_sizes,
    "orientation differs": dicom.dicom_iop_differs,
}
