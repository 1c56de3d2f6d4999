"""Site-local manifests: every site keeps its own manifest; nothing is pooled to set up.

In a real deployment no host holds every site's manifest. Three things that
``clinfuse train`` and the simulator take from the pooled cohort are made at the sites
instead:

* **the split**: each site splits its own patients (:func:`site_cohort`: patient-level,
  stratified by outcome, ``data.split_fractions`` and ``data.split_seed``; a ``split`` column
  is kept), so ``clinfuse evaluate RUN MANIFEST --split test`` at the site later finds the
  same test cases;
* **the tabular encoder's statistics**: each site summarizes its training cases
  (:meth:`~clinfuse.io.tabular.TabularEncoder.summarize`: per numeric column the count,
  mean and sum of squared deviations, per categorical column its levels) and the
  coordinator combines them exactly (:meth:`~clinfuse.io.tabular.TabularEncoder.from_summaries`);
* **the model's input facts**: image channels and signal leads, read from one case per
  modality at each site; the sites must agree.

:func:`describe_site` is a site's answer (counts and the summaries above, no case-level
value), :func:`plan_from_sites` the coordinator's plan from all answers (modalities, the
encoder, input shapes, each site's counts), and :func:`prepare_site` loads one site's cases
for the plan. Over Flower the plan is made by the run's ``start`` function before round 1
(:mod:`clinfuse.federated.flower_sites`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from clinfuse import MODALITIES
from clinfuse.cohort.manifest import SPLITS, Cohort
from clinfuse.cohort.split import split_cohort
from clinfuse.config import RunConfig
from clinfuse.data import CaseLoader, input_shapes
from clinfuse.errors import ClinFuseError, CohortError, ConfigError
from clinfuse.io.tabular import TabularEncoder
from clinfuse.training.run import load_labelled_cohort

__all__ = ["PLAN_FORMAT", "describe_site", "plan_from_sites", "site_cohort", "train_frame"]

PLAN_FORMAT = 1
"""Version of the plan's layout (``plan["format"]``)."""

_SHAPE_TRIES = 20  # cases tried per modality before a site reports no readable one


def site_cohort(manifest: str | Path, config: RunConfig, site: str) -> Cohort:
    """One site's labelled cases from its own manifest, split at the site.

    Raises:
        CohortError: an unreadable manifest, one outcome class only, or rows of another
            site (a site column naming other sites: the wrong file).
    """
    data = config.data
    cohort = load_labelled_cohort(manifest, data)
    others = sorted(
        {
            str(value)
            for value in (
                r.site if r.site is not None else r.extra.get("site") for r in cohort.rows
            )
            if value not in (None, "") and str(value) != site
        }
    )
    if others:
        raise CohortError(
            f"site {site!r}: the manifest has rows of other sites ({', '.join(others[:5])}); "
            "with site-local manifests each site's manifest holds its own cases only",
            field="site",
            path=cohort.manifest_path,
            hint="give each SuperNode its own manifest (node config manifest='...'), or "
            "empty the site column",
        )
    return split_cohort(
        cohort, fractions=data.split_fractions, seed=data.split_seed, by_date=data.split_by_date
    )


def train_frame(cohort: Cohort) -> pd.DataFrame:
    """The extra columns of the training cases (what the tabular encoder learns from)."""
    return pd.DataFrame([r.extra for r in cohort.rows if r.split == "train"])


def describe_site(cohort: Cohort, config: RunConfig) -> dict[str, Any]:
    """What a site tells the coordinator before training: counts and summaries only.

    Returns:
        ``splits`` (cases, events, patients per split), ``modalities`` (cases naming each
        file modality the manifest has a column for), ``tabular`` (the training cases'
        :meth:`~clinfuse.io.tabular.TabularEncoder.summarize`, or None) and ``shapes``
        (``image_channels``/``signal_leads`` of the first readable case).

    Raises:
        CohortError: no training case, or a tabular column missing or free text.
    """
    splits = {}
    for split in SPLITS:
        rows = [r for r in cohort.rows if r.split == split]
        splits[split] = {
            "n_cases": len(rows),
            "n_events": int(sum(r.label or 0 for r in rows)),
            "n_patients": len({r.patient_id for r in rows}),
        }
    if not splits["train"]["n_cases"]:
        raise CohortError(
            "the site has no training cases after the split",
            path=cohort.manifest_path,
            hint="check data.split_fractions, or the manifest's split column",
        )
    presence = cohort.declared_presence()
    modalities = {m: int(presence[m].sum()) for m in cohort.file_modalities()}
    tabular = None
    if config.data.tabular_columns:
        tabular = TabularEncoder(config.data.tabular_columns).summarize(train_frame(cohort))
    shapes: dict[str, int] = {}
    for m in ("image", "signal"):
        if modalities.get(m):
            shapes |= _first_shape(cohort, config, m)
    return {"splits": splits, "modalities": modalities, "tabular": tabular, "shapes": shapes}


def _first_shape(cohort: Cohort, config: RunConfig, modality: str) -> dict[str, int]:
    """The input shape of the first of the site's cases whose ``modality`` loads."""
    loader = CaseLoader(config.data, [modality])
    rows = [r for r in cohort.rows if r.has(modality)][:_SHAPE_TRIES]
    for row in rows:
        try:
            case = loader.load(row)
        except ClinFuseError:
            continue
        return input_shapes([case])
    return {}


def plan_from_sites(
    descriptions: Mapping[str, Mapping[str, Any]], config: RunConfig
) -> dict[str, Any]:
    """The coordinator's plan from every site's :func:`describe_site`.

    Returns:
        ``format``, ``modalities`` (the configured ones, or every modality some site has),
        ``tabular`` (the fitted encoder's state, or None), ``in_shapes`` (what the
        encoders' first layers need) and ``sites`` (each site's split counts).

    Raises:
        ConfigError: no site answered.
        CohortError: a configured modality no site has a column for, no modality at all,
            sites whose images or signals have different channels or leads, or tabular
            summaries that cannot be combined.
    """
    if not descriptions:
        raise ConfigError("no site described its data; the plan needs at least one site")
    sites = sorted(descriptions)
    columns = {m for d in descriptions.values() for m in d.get("modalities", {})}
    declared = {
        m: sum(int(d.get("modalities", {}).get(m, 0)) for d in descriptions.values())
        for m in columns
    }
    data = config.data
    if data.modalities is not None:
        modalities = list(data.modalities)
        for m in modalities:
            if m == "tabular" and not data.tabular_columns:
                raise ConfigError(
                    "modality 'tabular' needs data.tabular_columns", field="data.tabular_columns"
                )
            if m != "tabular" and m not in columns:
                raise CohortError(
                    f"modality {m!r} is configured but no site's manifest has a column for it "
                    f"(sites: {', '.join(sites)})",
                    field=m,
                )
    else:
        modalities = [m for m in MODALITIES if m != "tabular" and declared.get(m, 0) > 0]
        if data.tabular_columns:
            modalities.append("tabular")
    if not modalities:
        raise CohortError(
            f"no site has a modality to learn from (sites: {', '.join(sites)}): no image, note "
            "or signal named, and no data.tabular_columns"
        )
    shapes: dict[str, int] = {}
    for key in ("image_channels", "signal_leads"):
        seen = {s: int(d["shapes"][key]) for s, d in descriptions.items() if key in d["shapes"]}
        if len(set(seen.values())) > 1:
            detail = ", ".join(f"{s}: {v}" for s, v in sorted(seen.items()))
            raise CohortError(
                f"the sites' cases have different {key.replace('_', ' ')} ({detail}); one "
                "model needs the same at every site",
                field=key,
                hint="set data.image.channels / data.signal.n_leads in the run config so every "
                "site converts its files alike",
            )
        if seen:
            shapes[key] = next(iter(seen.values()))
    tabular = None
    if "tabular" in modalities:
        missing = [s for s in sites if descriptions[s].get("tabular") is None]
        if missing:
            raise CohortError(
                f"site(s) {', '.join(missing)} sent no tabular summary", field="tabular_columns"
            )
        tabular = TabularEncoder.from_summaries(
            data.tabular_columns, {s: descriptions[s]["tabular"] for s in sites}
        )
        shapes["tabular_features"] = tabular.n_features
    return {
        "format": PLAN_FORMAT,
        "modalities": modalities,
        "tabular": None if tabular is None else tabular.to_dict(),
        "in_shapes": shapes,
        "sites": {s: dict(descriptions[s]["splits"]) for s in sites},
        "availability": {s: dict(descriptions[s].get("modalities", {})) for s in sites},
    }
