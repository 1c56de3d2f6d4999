"""Split cases into sites: by a column (real sites) or seeded synthetic partitions.

Every function returns ``{site id: sorted int64 indices into the cases}``; the index sets are
disjoint and cover every case. Synthetic partitions let a researcher study heterogeneity on a
single-site cohort:

* ``iid`` — a seeded shuffle cut into near-equal parts;
* ``label-skew`` — per class, Dirichlet(α) shares over sites (Hsu et al. 2019); small α means
  sites see very different outcome rates;
* ``quantity-skew`` — site sizes drawn from Dirichlet(α), cases assigned at random.

>>> iid_partition(10, 3, seed=0)["site_0"].size
4
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from privacy.errors import SiteDataError

__all__ = [
    "PARTITIONS",
    "iid_partition",
    "label_skew_partition",
    "make_partition",
    "partition_by_column",
    "quantity_skew_partition",
]

PARTITIONS = ("site", "iid", "label-skew", "quantity-skew")


def _names(n_sites: int) -> list[str]:
    return [f"site_{i}" for i in range(n_sites)]


def _check_sites(n: int, n_sites: int, min_size: int) -> None:
    if n_sites < 1:
        raise SiteDataError(f"n_sites must be >= 1, got {n_sites}")
    if n < n_sites * min_size:
        raise SiteDataError(
            f"{n} cases cannot fill {n_sites} sites with at least {min_size} each; "
            "use fewer sites or a smaller min_size"
        )


def partition_by_column(values: Sequence[Any]) -> dict[str, np.ndarray]:
    """Indices of each distinct value of a column (e.g. the manifest's ``site``).

    Raises:
        SiteDataError: a case without a site (empty / NaN), naming its row.
    """
    out: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
            raise SiteDataError(
                f"row {i} has no site; fill the site column for every case or use a "
                "synthetic partition (iid, label-skew, quantity-skew)"
            )
        out.setdefault(str(v), []).append(i)
    return {k: np.asarray(out[k], dtype=np.int64) for k in sorted(out)}


def iid_partition(n: int, n_sites: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded shuffle of ``range(n)`` cut into ``n_sites`` near-equal parts."""
    _check_sites(n, n_sites, 1)
    perm = np.random.default_rng(seed).permutation(n)
    return {
        name: np.sort(part).astype(np.int64)
        for name, part in zip(_names(n_sites), np.array_split(perm, n_sites), strict=True)
    }


def quantity_skew_partition(
    n: int, n_sites: int, *, alpha: float = 1.0, min_size: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """Site sizes ~ ``min_size + Dirichlet(alpha) * (n - n_sites*min_size)``, cases at random."""
    _check_sites(n, n_sites, min_size)
    if alpha <= 0:
        raise SiteDataError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(n_sites, float(alpha)))
    spare = n - n_sites * min_size
    extra = np.floor(shares * spare).astype(int)
    extra[: spare - int(extra.sum())] += 1  # hand out the remainder
    sizes = extra + min_size
    perm = rng.permutation(n)
    bounds = np.cumsum(sizes)[:-1]
    return {
        name: np.sort(part).astype(np.int64)
        for name, part in zip(_names(n_sites), np.split(perm, bounds), strict=True)
    }


def label_skew_partition(
    labels: Sequence[Any] | np.ndarray,
    n_sites: int,
    *,
    alpha: float = 0.5,
    min_size: int = 2,
    seed: int = 0,
    max_tries: int = 100,
) -> dict[str, np.ndarray]:
    """Per class, split its cases over sites with Dirichlet(``alpha``) shares.

    Redraws (up to ``max_tries``) until every site has at least ``min_size`` cases.

    Raises:
        SiteDataError: no draw gave every site ``min_size`` cases (raise ``alpha`` or lower
            ``n_sites``).
    """
    y = np.asarray(labels)
    _check_sites(len(y), n_sites, min_size)
    if alpha <= 0:
        raise SiteDataError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(n_sites)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(n_sites, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return {
                name: np.sort(np.asarray(p, dtype=np.int64))
                for name, p in zip(_names(n_sites), parts, strict=True)
            }
    raise SiteDataError(
        f"label-skew with alpha={alpha} left a site with fewer than {min_size} cases in "
        f"{max_tries} draws; raise alpha or use fewer sites"
    )


def make_partition(
    kind: str,
    *,
    n: int | None = None,
    labels: Sequence[Any] | np.ndarray | None = None,
    column: Sequence[Any] | None = None,
    n_sites: int = 3,
    alpha: float | None = None,
    min_size: int = 2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Dispatch on ``kind`` (one of :data:`PARTITIONS`).

    Raises:
        SiteDataError: unknown kind or the input it needs is missing.
    """
    if kind == "site":
        if column is None:
            raise SiteDataError("partition 'site' needs the site column's values")
        return partition_by_column(column)
    size = n if n is not None else (len(labels) if labels is not None else None)
    if size is None:
        raise SiteDataError(f"partition {kind!r} needs n or labels")
    if kind == "iid":
        return iid_partition(size, n_sites, seed=seed)
    if kind == "quantity-skew":
        return quantity_skew_partition(
            size, n_sites, alpha=1.0 if alpha is None else alpha, min_size=min_size, seed=seed
        )
    if kind == "label-skew":
        if labels is None:
            raise SiteDataError("partition 'label-skew' needs the labels")
        return label_skew_partition(
            labels, n_sites, alpha=0.5 if alpha is None else alpha, min_size=min_size, seed=seed
        )
    raise SiteDataError(f"unknown partition {kind!r}; choose one of {list(PARTITIONS)}")
