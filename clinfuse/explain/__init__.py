"""Explanations: exact modality Shapley values and within-modality attributions.

Modality level (:mod:`clinfuse.explain.modality`)::

    from clinfuse.explain import build_modality_cache, modality_shapley
    cache = build_modality_cache(model, cases)       # encoders run once
    exp = modality_shapley(model, cache)             # shap.Explanation (N, M), exact
    exp.base_values + exp.values.sum(1)              # == the fused logits

Within a modality (:mod:`clinfuse.explain.within`): :func:`explain_note`,
:func:`explain_image`, :func:`explain_signal`, :func:`explain_tabular`, each a
``shap.Explanation`` of one case. :func:`explain_run` is ``clinfuse explain``.

``shap`` and ``captum`` (the ``explain`` extra) load only when these are called.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_exports
from clinfuse.explain._common import ExplainerFallbackWarning, NoModalityWarning

_LAZY = {
    "ModalityCache": "clinfuse.explain.modality",
    "build_modality_cache": "clinfuse.explain.modality",
    "coalition_values": "clinfuse.explain.modality",
    "modality_importance": "clinfuse.explain.modality",
    "modality_shapley": "clinfuse.explain.modality",
    "modality_shapley_frame": "clinfuse.explain.modality",
    "performance_shapley": "clinfuse.explain.modality",
    "explain_image": "clinfuse.explain.within",
    "explain_note": "clinfuse.explain.within",
    "explain_signal": "clinfuse.explain.within",
    "explain_tabular": "clinfuse.explain.within",
    "image_lesion_mass": "clinfuse.explain.within",
    "lesion_mask": "clinfuse.explain.within",
    "explain_case": "clinfuse.explain.report",
    "explain_ensemble": "clinfuse.explain.report",
    "explain_ensemble_case": "clinfuse.explain.report",
    "explain_run": "clinfuse.explain.report",
    "image_background": "clinfuse.explain.report",
    "load_cached_case": "clinfuse.explain.report",
    "load_cached_modality_shapley": "clinfuse.explain.report",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["ExplainerFallbackWarning", "NoModalityWarning", *sorted(_LAZY)]
