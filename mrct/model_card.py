"""The model card of a package: Markdown prose rendered from its ``model.json``.

The manifest is the authoritative description; the card only lays it out for people
(intended use, architecture, preprocessing, intensity maps, training data, metrics,
limitations, files and how to load).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["render_card"]


def render_card(manifest: Mapping[str, Any]) -> str:
    """The model card (Markdown prose) for a manifest."""
    m, arch = manifest, manifest.get("architecture", {})
    gen, grid = arch.get("generator", {}), m.get("preprocessing", {}).get("grid", {})
    directions = ", ".join(d.replace("_to_", " → ").upper() for d in m.get("directions", {}))
    files = "\n".join(
        f"| `{n}` | {f.get('bytes')} | `{f.get('sha256')}` |" for n, f in m.get("files", {}).items()
    )
    return f"""# {m.get("name")}

{str(m.get("description", "")).strip()}

An mrct model package (format {m.get("format_version")}) created {m.get("created")} with mrct \
{m.get("mrct_version")}. License: {m.get("license")}. This card is generated from `model.json`, \
which is the authoritative description.

## Intended use

Research on translating head scans between MR and CT. **Synthetic images are not for diagnosis**, \
treatment planning (including radiotherapy dose calculation) or any other clinical decision.

## Architecture

A {gen.get("spatial_dims")}D CycleGAN; this package holds its ResNet generators ({directions}), \
{int(arch.get("parameters", 0)):,} parameters each: {gen.get("ngf")} base filters, \
{gen.get("n_residual_blocks")} residual blocks, {gen.get("padding")} padding. The discriminators \
are needed only for training and are not included.

{_bullets(gen)}

## Preprocessing

Inputs are cropped to the brow-to-jaw slab and resampled to {grid.get("depth")} × \
{grid.get("height")} × {grid.get("width")} voxels ({grid.get("inplane_mm")} mm in plane). mrct runs \
the same chain at inference and inverts it, so outputs come back on the input grid.

{_bullets(m.get("preprocessing", {}))}

## Intensity

How network outputs in [-1, 1] map back to CT (HU) and MR values:

{_bullets(m.get("intensity", {}))}

## Training data

{_bullets(m.get("training", {})) or "Not recorded."}

## Metrics

{_bullets(m.get("metrics", {})) or "None recorded."}

## Limitations

The model saw only the heads described under training data. Scanners, sequences, contrast agents, \
children, implants, surgery and pathology missing from that data may give plausible but wrong \
images. Anatomy outside the brow-to-jaw slab is not translated, and detail finer than the model \
grid is lost. A CycleGAN can invent or remove structures while keeping images realistic: compare \
outputs with the source scan.

## Files

| file | bytes | sha256 |
| --- | ---: | --- |
{files}

## How to load

```python
from mrct.models import load_package

package = load_package("models/{m.get("name")}")  # verifies every checksum
generator = package.load_generator("mr_to_ct")  # torch.nn.Module in eval mode
```
"""


def _bullets(data: Any, prefix: str = "") -> str:
    """Nested mappings as one bullet per leaf: ``- `grid.depth`: 30``."""
    if not isinstance(data, Mapping):
        return f"- `{prefix}`: {json.dumps(data)}"
    items = (_bullets(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in data.items())
    return "\n".join(i for i in items if i)
