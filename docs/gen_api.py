"""Generate ``docs/api.md``, the Python API reference, from the code's signatures and docstrings.

Usage::

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 when docs/api.md is not what the code says

``tests/docs/test_api_docs.py`` runs the check, so the reference cannot drift from
the code. To document another object, add it to :data:`SECTIONS`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("api.md")

# (section title, intro, [(module, object, [members documented under it])])
SECTIONS: list[tuple[str, str, list[tuple[str, str, list[str]]]]] = [
    (
        "Cohorts",
        "Reading, checking and splitting a cohort manifest (see `docs/manifest.md`).",
        [
            (
                "clinfuse.cohort",
                "Cohort",
                [
                    "from_manifest",
                    "file_modalities",
                    "declared_presence",
                    "labels",
                    "to_frame",
                    "subset",
                ],
            ),
            ("clinfuse.cohort", "validate_cohort", []),
            ("clinfuse.cohort", "ValidationReport", ["ok", "errors", "warnings", "to_frame"]),
            ("clinfuse.cohort", "split_cohort", []),
            ("clinfuse.cohort", "assign_folds", []),
            ("clinfuse.synth", "synthesize_cohort", []),
        ],
    ),
    (
        "Configuration",
        "Every field with its default is listed in `docs/configuration.md`.",
        [
            ("clinfuse.config", "RunConfig", ["to_yaml", "save"]),
            ("clinfuse.config", "DataConfig", []),
            ("clinfuse.config", "TrainingConfig", []),
            ("clinfuse.config", "FusionConfig", []),
            ("clinfuse.config", "CalibrationConfig", []),
            ("clinfuse.config", "load_config", []),
            ("clinfuse.config", "demo_config", []),
        ],
    ),
    (
        "Training and prediction",
        "",
        [
            ("clinfuse.training.run", "train_run", []),
            ("clinfuse.model", "load_run", []),
            (
                "clinfuse.model",
                "FusionModel",
                [
                    "from_pretrained",
                    "save_pretrained",
                    "predict",
                    "forward_cases",
                    "probabilities",
                    "loader",
                ],
            ),
            ("clinfuse.data", "CaseLoader", ["load_many", "tabular_fields"]),
            ("clinfuse.ensemble", "load_ensemble", []),
            (
                "clinfuse.ensemble",
                "FoldEnsemble",
                ["from_crossval", "predict", "score", "loader", "fold_cases"],
            ),
            ("clinfuse.ensemble", "EnsembleScores", []),
            ("clinfuse.scored", "write_scored", []),
            ("clinfuse.scored", "read_provenance", []),
            ("clinfuse.scored", "provenance_path", []),
            ("clinfuse.scored", "model_version", []),
            ("clinfuse.scored", "run_fingerprint", []),
            ("clinfuse.scored", "evaluates_model", []),
        ],
    ),
    (
        "Evaluation",
        "Methods and outputs: `docs/evaluation.md`.",
        [
            ("clinfuse.evaluation", "evaluate_run", []),
            ("clinfuse.evaluation", "Evaluator", ["evaluate", "evaluate_scored"]),
            ("clinfuse.evaluation", "EvaluationResult", []),
            ("clinfuse.evaluation.casemix", "case_mix", []),
            (
                "clinfuse.evaluation.conformal",
                "ConformalSets",
                ["fit", "predict", "contains", "describe"],
            ),
            ("clinfuse.evaluation.conformal", "conformal_from_evaluation", []),
            ("clinfuse.evaluation.conformal", "coverage_table", []),
            ("clinfuse.evaluation.conformal", "calibration_overlap", []),
            ("clinfuse.evaluation.conformal", "coverage_by_group", []),
            ("clinfuse.evaluation.conformal", "alpha_sweep", []),
            ("clinfuse.evaluation.conformal", "adaptive_replay", []),
            ("clinfuse.evaluation.conformal", "adapted_from_evaluation", []),
            ("clinfuse.evaluation.temporal", "performance_over_time", []),
            ("clinfuse.evaluation.temporal", "calibration_drift", []),
            ("clinfuse.evaluation.temporal", "auroc_trend", []),
            ("clinfuse.evaluation.temporal", "parse_dates", []),
            ("clinfuse.evaluation.cusum", "risk_adjusted_cusum", []),
            ("clinfuse.evaluation.cusum", "Cusum", ["to_dict"]),
            ("clinfuse.evaluation.cusum", "control_limit", []),
            ("clinfuse.evaluation.cusum", "change_point", []),
            ("clinfuse.evaluation.cusum", "ChangePoint", []),
            ("clinfuse.evaluation.cusum", "cusum_by_group", []),
            ("clinfuse.evaluation.segments", "segment_calibration", []),
            ("clinfuse.evaluation.segments", "segments_by_group", []),
            ("clinfuse.evaluation.funnel", "funnel_data", []),
            ("clinfuse.evaluation.funnel", "funnel_limits", []),
            ("clinfuse.evaluation.monitor", "monitor_predictions", []),
            ("clinfuse.evaluation.monitor", "monitor_periods", []),
            ("clinfuse.evaluation.monitor", "psi", []),
            ("clinfuse.evaluation.monitor", "psi_p_value", []),
            ("clinfuse.evaluation.subgroups", "group_heterogeneity", []),
            ("clinfuse.evaluation.crossval", "cross_validate", []),
            ("clinfuse.evaluation.crossval", "CrossValResult", []),
            ("clinfuse.evaluation.repeated", "repeated_cross_validate", []),
            ("clinfuse.evaluation.repeated", "RepeatedCrossValResult", []),
            ("clinfuse.evaluation.dynamic", "dynamic_recalibration", []),
            ("clinfuse.evaluation.dynamic", "DynamicRecalibration", ["table"]),
            ("clinfuse.evaluation.dynamic", "choose_half_life", []),
            ("clinfuse.evaluation.tune", "tune", []),
            ("clinfuse.evaluation.tune", "TuningResult", []),
            ("clinfuse.evaluation.tune", "read_space", []),
            ("clinfuse.evaluation.tune", "SearchSpace", ["candidates"]),
            ("clinfuse.evaluation.tune", "Range", []),
            ("clinfuse.evaluation.tune", "Halving", ["rungs"]),
            ("clinfuse.evaluation.tune", "candidate_config", []),
            ("clinfuse.evaluation.tune", "trial_figures", []),
            ("clinfuse.evaluation.backtest", "backtest_run", []),
            ("clinfuse.evaluation.backtest", "BacktestResult", []),
            ("clinfuse.evaluation.meta", "random_effects", []),
            ("clinfuse.evaluation.meta", "auroc_meta_analysis", []),
            ("clinfuse.evaluation.meta", "oe_meta_analysis", []),
            ("clinfuse.evaluation.samplesize", "validation_sample_size", []),
            ("clinfuse.evaluation.samplesize", "from_evaluation", []),
            ("clinfuse.evaluation.samplesize", "SampleSize", []),
            ("clinfuse.evaluation.compare", "compare_evaluations", []),
            ("clinfuse.evaluation.compare", "ComparisonResult", []),
            ("clinfuse.evaluation.compare", "reclassification", []),
            ("clinfuse.evaluation.recalibrate", "recalibrate_run", []),
            ("clinfuse.evaluation.recalibrate", "closed_test", []),
            ("clinfuse.evaluation.recalibrate", "RecalibrationResult", ["method"]),
            ("clinfuse.evaluation.delong", "delong_ci", []),
            ("clinfuse.evaluation.delong", "delong_test", []),
        ],
    ),
    (
        "Explanations",
        "Methods and cost: `docs/explanations.md`. Every function returns a `shap.Explanation`"
        " (or a plain dict for cohort summaries).",
        [
            ("clinfuse.explain", "explain_run", []),
            ("clinfuse.explain", "explain_ensemble", []),
            ("clinfuse.explain", "build_modality_cache", []),
            ("clinfuse.explain", "ModalityCache", []),
            ("clinfuse.explain", "modality_shapley", []),
            ("clinfuse.explain", "modality_shapley_frame", []),
            ("clinfuse.explain", "modality_importance", []),
            ("clinfuse.explain", "performance_shapley", []),
            ("clinfuse.explain", "explain_note", []),
            ("clinfuse.explain", "explain_image", []),
            ("clinfuse.explain", "explain_signal", []),
            ("clinfuse.explain", "explain_tabular", []),
            ("clinfuse.explain", "explain_case", []),
            ("clinfuse.explain", "explain_ensemble_case", []),
            ("clinfuse.explain", "image_background", []),
            ("clinfuse.explain", "load_cached_modality_shapley", []),
            ("clinfuse.explain", "load_cached_case", []),
        ],
    ),
    (
        "De-identification (`privacy`)",
        "The generic privacy package; it never imports `clinfuse`. Background: `docs/deid.md`.",
        [
            ("privacy.cohort", "deidentify_cohort", []),
            ("privacy.dicom", "DicomDeidentifier", ["deidentify_file", "deidentify_dataset"]),
            ("privacy.dicom", "DicomOptions", []),
            ("privacy.pixels", "PixelCleaner", []),
            ("privacy.pixels", "load_region_rules", []),
            ("privacy.text", "TextDeidentifier", []),
            ("privacy.text", "redact_tokens", []),
            ("privacy.text", "international_first_names", []),
            ("privacy.edf", "deidentify_edf", []),
            ("privacy.pseudonym", "load_secret", []),
            ("privacy.pseudonym", "Pseudonymizer", []),
            ("privacy.suppression", "suppress_small_cells", []),
        ],
    ),
    (
        "Federated training and differential privacy",
        "Background and settings: `docs/federated.md`.",
        [
            ("clinfuse.federated", "federated_run", []),
            ("clinfuse.federated", "FederatedSettings", []),
            ("clinfuse.federated", "privacy_utility", []),
            ("clinfuse.federated.stage2", "fit_from_sites", []),
            ("privacy.dp", "DPConfig", []),
            ("privacy.dp", "compute_epsilon", []),
        ],
    ),
    (
        "Errors",
        "Every error clinfuse raises on bad input is a `ClinFuseError` that also subclasses the"
        " matching built-in, and its message names the case, file and field.",
        [
            ("clinfuse.errors", "ClinFuseError", []),
            ("clinfuse.errors", "CohortError", []),
            ("clinfuse.errors", "ConfigError", []),
            ("clinfuse.errors", "ModalityLoadError", []),
            ("clinfuse.errors", "DataFileNotFoundError", []),
        ],
    ),
]

_SECTION = re.compile(
    r"^(Args|Arguments|Attributes|Returns|Raises|Warns|Yields|Example|Examples|Note|Notes):\s*$"
)
_ITEM = re.compile(r"^(\*{0,2}[\w.]+(?:,\s*\*{0,2}[\w.]+)*)(\s*\([^)]*\))?:\s*(.*)$")


def _annotation(ann: Any) -> str:
    if isinstance(ann, str):
        return ann  # postponed annotations (``from __future__ import annotations``)
    return inspect.formatannotation(ann)


def _default(value: Any) -> str:
    text = repr(value)
    if "<factory>" in text or "_HAS_DEFAULT_FACTORY" in text:
        return "<factory>"
    return re.sub(r"<([\w.]+) object at 0x[0-9a-f]+>", r"\1()", text)  # stable reprs


def _signature(obj: Any, name: str) -> str:
    """``name(a: int = 1, *, b: str | None = None) -> Path`` with annotations as written."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return name
    parts: list[str] = []
    star_done = False
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        text = prefix + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += (
                f" = {_default(p.default)}"
                if p.annotation is not p.empty
                else f"={_default(p.default)}"
            )
        parts.append(text)
    out = f"{name}({', '.join(parts)})"
    if not inspect.isclass(obj) and sig.return_annotation is not sig.empty:
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`~?([^`]+)`")


def _doc_to_markdown(doc: str) -> str:
    """Google-style docstring → Markdown: sections in bold, argument lists as bullets."""
    doc = _ROLE.sub(lambda m: f"`{m.group(1)}`", doc)
    out: list[str] = []
    section: str | None = None
    in_code = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>") and not in_code:
            out.append("```python")
            in_code = True
        if in_code:
            if not stripped:
                out.append("```")
                in_code = False
                out.append("")
                continue
            out.append(stripped)
            continue
        head = _SECTION.match(stripped) if not line.startswith(" ") else None
        if head:
            section = head.group(1)
            out.extend(["", f"**{section}**", ""])
            continue
        if section and line.startswith("    "):
            body = line[4:]
            item = _ITEM.match(body) if not body.startswith(" ") else None
            if item and section in ("Args", "Arguments", "Attributes", "Raises", "Warns"):
                names = ", ".join(f"`{n.strip()}`" for n in item.group(1).split(","))
                kind = (item.group(2) or "").strip()
                out.append(f"- {names}{' ' + kind if kind else ''}: {item.group(3)}".rstrip())
            elif out and out[-1].startswith("- "):
                out[-1] += " " + body.strip()
            else:
                out.append(body.strip())
            continue
        if not stripped:
            section = None
        out.append(stripped)
    if in_code:
        out.append("```")
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def own_doc(obj: Any) -> str | None:
    """The object's own docstring (a class without one does not inherit its base's)."""
    if inspect.isclass(obj):
        raw = obj.__dict__.get("__doc__")
        return inspect.cleandoc(raw) if raw else None
    return inspect.getdoc(obj)


def _is_pydantic(obj: Any) -> bool:
    return inspect.isclass(obj) and hasattr(obj, "model_fields") and hasattr(obj, "model_validate")


def _field_default(field: Any) -> str:
    factory = getattr(field, "default_factory", None)
    if factory is not None:
        label = getattr(factory, "__name__", "factory")
        return f"`{label}()`" if label != "<lambda>" else "*computed*"
    if field.is_required():
        return "*required*"
    return f"`{field.default!r}`"


def _fields_table(obj: Any) -> list[str]:
    """A Markdown table of a pydantic model's fields: type, default, description."""
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for fname, field in obj.model_fields.items():
        ann = inspect.formatannotation(field.annotation).replace("|", "\\|")
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{fname}` | `{ann}` | {_field_default(field)} | {desc} |")
    return [*rows, ""]


def _entry(module: str, name: str, members: list[str]) -> str:
    obj = getattr(importlib.import_module(module), name)
    kind = "class" if inspect.isclass(obj) else "function"
    public = f"{module}.{name}"
    signature = f"{name}(**fields)" if _is_pydantic(obj) else _signature(obj, name)
    lines = [f"### `{public}`", "", f"*{kind}*", "", "```python", signature, "```", ""]
    doc = own_doc(obj)
    if doc:
        lines += [_doc_to_markdown(doc), ""]
    if _is_pydantic(obj):
        lines += _fields_table(obj)
    for member in members:
        attr = inspect.getattr_static(obj, member)
        value = getattr(obj, member)
        lines.append(f"#### `{name}.{member}`")
        lines.append("")
        if isinstance(attr, property):
            lines.append("*property*")
            mdoc = inspect.getdoc(attr)
        else:
            lines += ["```python", _signature(value, member), "```"]
            mdoc = inspect.getdoc(value)
        lines.append("")
        if mdoc:
            lines += [_doc_to_markdown(mdoc), ""]
    return "\n".join(lines)


def render() -> str:
    """The full text of ``docs/api.md``."""
    parts = [
        "# Python API reference",
        "",
        "<!-- generated by docs/gen_api.py from the code's docstrings; do not edit by hand."
        " Regenerate with `python docs/gen_api.py` (a test fails when it is stale). -->",
        "",
        "The objects most scripts and notebooks need. `import clinfuse` is cheap: "
        "`clinfuse.Cohort`, `clinfuse.RunConfig`, `clinfuse.train_run`, `clinfuse.load_run`, "
        "`clinfuse.FusionModel`, `clinfuse.synthesize_cohort` and `clinfuse.validate_cohort` "
        "are loaded on first use. The notebooks in `notebooks/` show them in context.",
        "",
        "## Contents",
        "",
    ]
    for title, _intro, entries in SECTIONS:
        names = ", ".join(f"`{name}`" for _m, name, _mem in entries)
        parts.append(f"- **{title}**: {names}")
    parts.append("")
    for title, intro, entries in SECTIONS:
        parts += [f"## {title}", ""]
        if intro:
            parts += [intro, ""]
        for module, name, members in entries:
            parts.append(_entry(module, name, members))
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print("docs/api.md is stale: run `python docs/gen_api.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
