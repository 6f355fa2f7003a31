"""The train/test split of a prepared set: seeded, independent of input order, per domain."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import numpy as np

TRAIN_TENTHS = 7  # 70 % train, 30 % test, per domain


def split_ids(ids: Iterable[str], seed: int, hold_out_from: str | None = None) -> dict[str, list[str]]:
    """A seeded 70/30 train/test split: sort ids, permute with ``default_rng(seed)``, take the
    first 70 % (rounded half up) for training, keeping at least one test id when there are two.

    With ``hold_out_from`` (a shell pattern on ids, e.g. ``IXI*``), only matching ids are
    split; the others always train (say, the few scans of a rarer scanner or format).
    """
    ids = list(ids)
    if hold_out_from is not None:
        always = sorted(i for i in ids if not fnmatch.fnmatchcase(i, hold_out_from))
        split = split_ids([i for i in ids if fnmatch.fnmatchcase(i, hold_out_from)], seed)
        return {"train": sorted(split["train"] + always), "test": split["test"]}
    ordered = sorted(ids)
    n = len(ordered)
    n_train = (TRAIN_TENTHS * n + 5) // 10
    if n >= 2:
        n_train = min(max(n_train, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": sorted(ordered[i] for i in perm[:n_train]),
        "test": sorted(ordered[i] for i in perm[n_train:]),
    }
