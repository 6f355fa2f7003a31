"""Check a model package on held-out scans: the quality bar of a bundled model.

    python pipelines/evaluate_model.py --model models/mrct-head-medium \\
        --prepared prepared/ -o work/evaluation.json

MR -> synthetic CT is checked on the MRs of the prepared set's *test* split (never seen in
training) and on the MRs given with ``--mr``; CT -> synthetic MR on the CTs given with
``--ct``. Say in the card whether the ``--mr`` and ``--ct`` scans were in training. Every scan
is translated from its original file with the automatic slab, exactly as ``mrct translate``
does. The checks (``mrct/metrics.py``), inside the slab:

- sCT: Dice(sCT head outline above -500 HU, MR head mask) >= 0.95; median air HU <= -950;
  median head HU in [0, 100]; 5-35 % of head voxels above 300 HU;
- sMR: Dice(sMR head outline, CT head mask) >= 0.95 and a dark background (median outside
  the head <= 5 % of the median inside).

A head is an outline (largest body above the threshold, holes filled), the same rule for
the synthetic image as for the source, so air cavities and dark MR bone count as head.

Writes JSON (one entry per scan, and the summary) and prints a markdown table. Previews
of the first scans go next to the JSON file with ``--previews N``. Exit code 0 when every scan
was evaluated, whether or not it meets the bar (a miss is a result, recorded as ``passes``);
1 when some scan failed to run (after the JSON and the table are written). A bad argument (a
missing file, an unknown model) stops it before any scan, with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from mrct.errors import InputNotFoundError, MrctError, OutputExistsError
from mrct.inference import Translator
from mrct.io import read_volume
from mrct.io.discover import scan_stem
from mrct.metrics import synthetic_ct_checks, synthetic_mr_checks
from mrct.prepare_manifest import mr_test_split
from mrct.translation import write_preview
from mrct.volume import Modality


def _unique_ids(scans: list[tuple[str, Path, str | None]]) -> list[tuple[str, Path, str | None]]:
    taken: set[str] = set()
    unique = []
    for scan_id, path, series in scans:
        name, n = scan_id, 1
        while name in taken:  # "a", "a", "a_2" -> "a", "a_2", "a_2_2": each its own
            n += 1
            name = f"{scan_id}_{n}"
        taken.add(name)
        unique.append((name, path, series))
    return unique


def held_out_mrs(prepared: Path) -> list[tuple[str, Path, str | None]]:
    """(id, source, series) of the prepared set's MR test split."""
    _, entries = mr_test_split(prepared)
    return [(e["id"], Path(e["source"]), e.get("series")) for e in entries]


def evaluate(
    translator: Translator,
    scans: list[tuple[str, Path, str | None]],
    to: Modality,
    previews: int,
    out_dir: Path,
) -> list[dict[str, Any]]:
    rows = []
    for n, (scan_id, path, series) in enumerate(scans):
        row: dict[str, Any] = {"id": scan_id, "source": str(path), "direction": f"to {to.value}"}
        try:
            volume = read_volume(path, series=series)
            result = translator.translate(volume, to)
            slab = result.slabs[0]
            checks = (synthetic_ct_checks if to is Modality.CT else synthetic_mr_checks)(
                volume, result.volume, slab["superior_mm"], slab["inferior_mm"]
            )
            row.update(checks.to_dict(), slab=slab)
            if n < previews:
                preview = out_dir / f"preview_{to.value.lower()}_{scan_id}.png"
                write_preview(volume, result.volume, preview, overwrite=True, slabs=result.slabs)
                row["preview"] = preview.name
        except Exception as err:  # one scan's failure is a result, not the end of the evaluation
            # The row's source is said beside it: an mrct error about that path says what alone.
            if isinstance(err, MrctError):
                why = err.message if err.path == str(path) else str(err)
            else:
                why = f"{type(err).__name__}: {err}"
            row.update(passes=False, error=why.splitlines()[0])
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    out: dict[str, Any] = {"scans": len(rows), "failed_to_run": len(rows) - len(ok)}
    out["passing"] = sum(bool(r.get("passes")) for r in rows)
    for key in keys:
        values = [float(r[key]) for r in ok]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for name, block in result["summary"].items():
        lines += [
            f"**{name}**: {block['passing']}/{block['scans']} scans pass"
            + (f" ({block['failed_to_run']} failed to run)" if block["failed_to_run"] else ""),
            "",
            "| check | median | min | max |",
        ]
        lines += ["|---|---|---|---|"]
        for key, value in block.items():
            if isinstance(value, dict):
                lines.append(f"| {key} | {value['median']:.3f} | {value['min']:.3f} | {value['max']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    from mrct.script_main import USAGE, ScriptError, non_negative_int

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model package folder or bundled name")
    parser.add_argument("--prepared", type=Path, help="prepared set whose MR test split is evaluated")
    parser.add_argument(
        "--mr",
        type=Path,
        nargs="*",
        default=[],
        help="more MR scans (say in the card whether they were trained on)",
    )
    parser.add_argument("--ct", type=Path, nargs="*", default=[], help="CT scans for CT -> synthetic MR")
    parser.add_argument(
        "--previews",
        type=non_negative_int,
        default=2,
        help="PNG previews of the first N scans per direction (default 2)",
    )
    parser.add_argument("--limit", type=non_negative_int, default=None, help="only the first N test MRs")
    parser.add_argument("-o", "--output", type=Path, required=True, help="results JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results JSON")
    args = parser.parse_args()
    if args.output.exists() and not args.overwrite:  # an evaluation is minutes of work: as mrct does
        raise OutputExistsError("exists; pass --overwrite to replace it", args.output)
    # The arguments are checked before the model loads and the first scan runs (minutes in).
    mrs = held_out_mrs(args.prepared) if args.prepared else []
    mrs = mrs[: args.limit] if args.limit is not None else mrs
    for option, paths in (("--mr", args.mr), ("--ct", args.ct)):
        for path in paths:
            if not path.exists():
                raise InputNotFoundError(f"no such file or folder (given with {option})", path)
    # Named as the prepared set names its scans: "IXI034-HH-1260_T1", not "….nii.gz"; a name
    # given twice (a test-split scan also given with --mr) gets "_2", so no preview is replaced.
    mrs = _unique_ids(mrs + [(scan_stem(p.name), p, None) for p in args.mr])
    cts = _unique_ids([(scan_stem(p.name), p, None) for p in args.ct])
    if not mrs and not cts:
        raise ScriptError(
            "nothing to evaluate: give --prepared (a non-empty MR test split), --mr or --ct", USAGE
        )
    translator = Translator.from_package(args.model, "auto")
    out_dir = args.output.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    ct_rows = evaluate(translator, mrs, Modality.CT, args.previews, out_dir)
    mr_rows = evaluate(translator, cts, Modality.MR, args.previews, out_dir)
    result = {
        "model": {"name": translator.package.name, "checksum": translator.package.checksum},
        "summary": {
            "MR -> synthetic CT": summary(
                ct_rows, ("head_dice", "air_median_hu", "head_median_hu", "bone_fraction")
            ),
            "CT -> synthetic MR": summary(mr_rows, ("head_dice", "background_ratio")),
        },
        "scans": ct_rows + mr_rows,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown(result))
    # Missing the quality bar is a result (exit 0); a scan that could not be evaluated is not.
    failed = [r for r in ct_rows + mr_rows if "error" in r]
    if failed:
        first = f"{failed[0]['source']}: {failed[0]['error']}"
        print(
            f"error: {len(failed)} of {len(ct_rows) + len(mr_rows)} scans failed to run (first, {first}); "
            f"see {args.output}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    from mrct.script_main import run_main

    run_main(main)
