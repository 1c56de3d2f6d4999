"""Within-modality attributions: which words, pixels, ECG segments and labs drove a modality.

Each function explains one case's **unimodal logit** of one modality (encoder →
unimodal head). In late fusion that logit is exactly what the modality feeds
the combiner (its contribution is ``w_m (z_m − c_m)``), so these attributions
times ``w_m`` split the modality's Shapley value among its parts.

| modality | method (first choice → fallbacks) | values |
| --- | --- | --- |
| note | ``shap.maskers.Text`` + Partition explainer (capped ``max_evals``) | one per token |
| image | ``shap.GradientExplainer`` → Captum Integrated Gradients → Captum Occlusion | one per voxel (C, X, Y[, Z]) |
| signal | Captum ``FeatureAblation`` of time segments per lead (occlusion) → GradientExplainer | one per sample (L, T), constant per segment |
| tabular | ``shap.ExactExplainer``, players = manifest columns, removal = "value missing" | one per column |

Every function returns a ``shap.Explanation`` for one case (usable with
``shap.plots.*``); the method that produced it is in ``exp.method`` (a fallback
also raises :class:`~clinfuse.explain.ExplainerFallbackWarning` naming it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from clinfuse.errors import ConfigError
from clinfuse.explain._common import ExplainerFallbackWarning, import_captum_attr, import_shap

__all__ = [
    "FusedLogit",
    "attribution_target",
    "explain_image",
    "explain_note",
    "explain_signal",
    "explain_tabular",
    "image_lesion_mass",
]


class FusedLogit(nn.Module):
    """One modality's embedding → the case's fused logit, every other modality held at this
    case's own embedding (and presence): the target of within-modality attributions for early
    and intermediate fusion, where the fused logit is not a sum of unimodal logits.

    Args:
        model: a FusionModel.
        case: the loaded case.
        modality: the modality whose embedding varies.
    """

    def __init__(self, model: Any, case: dict[str, Any], modality: str) -> None:
        super().__init__()
        from clinfuse.model import Collator, move_batch
        from clinfuse.training.embed import attach_embeddings

        frozen = model.frozen_modalities
        cases = attach_embeddings(model, [case], frozen) if frozen else [case]
        batch = Collator(model.modalities, dict(model.network.encoders), frozen)(cases)
        batch = move_batch(batch, model.device)
        was = model.network.training
        model.network.eval()
        with torch.no_grad():
            held = {m: e.detach().float() for m, e in model.network.embed(batch).items()}
        model.network.train(was)
        self.fusion = model.network.fusion
        self.modality = modality
        self.held = held
        self.present = batch["present"]

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        n = embedding.shape[0]
        emb = {
            m: embedding.float() if m == self.modality else e.expand(n, -1)
            for m, e in self.held.items()
        }
        return self.fusion(emb, self.present.expand(n, -1)).logit.float()[:, None]


def attribution_target(model: Any, case: dict[str, Any], modality: str) -> tuple[nn.Module, str]:
    """What a within-modality explanation attributes, as ``(embedding → (B, 1) logit, name)``.

    Late fusion: the modality's unimodal logit (the fused logit is a weighted sum of those, so
    this is the modality's contribution up to its weight). Early and intermediate fusion: the
    fused logit with the other modalities held at this case (:class:`FusedLogit`).
    """
    if model.config.fusion.strategy == "late":
        return model.network.fusion.unimodal_heads[modality], f"{modality} unimodal logit"
    return FusedLogit(model, case, modality), f"fused logit ({modality} varied, others held)"


class UnimodalLogit(nn.Module):
    """Encoder of one modality followed by a head: input → (B, 1) logit.

    Args:
        model: a FusionModel.
        modality: which modality.
        wrap: turns the raw input tensor into what the encoder's ``forward`` takes.
        head: embedding → (B, 1) logit; default the modality's unimodal head (see
            :func:`attribution_target` for early and intermediate fusion).
    """

    def __init__(
        self,
        model: Any,
        modality: str,
        wrap: Callable[[torch.Tensor], Any] | None = None,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = model.network.encoders[modality]
        self.head = head if head is not None else model.network.fusion.unimodal_heads[modality]
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = self.wrap(x) if self.wrap is not None else x
        return self.head(self.encoder(inputs).float())


def _require(case: dict[str, Any], modality: str, model: Any) -> int:
    if modality not in model.modalities:
        raise ConfigError(
            f"the run has no {modality!r} modality (run modalities: {model.modalities})",
            field=modality,
        )
    i = model.modalities.index(modality)
    if not bool(case["present"][i]) or case.get(modality) is None:
        raise ConfigError(
            f"modality {modality!r} is missing for this case: nothing to attribute",
            case_id=case.get("case_id"),
            field=modality,
            hint="within-modality explanations exist only for present modalities",
        )
    return i


def _fallback(case_id: Any, modality: str, failed: str, error: BaseException, used: str) -> None:
    warnings.warn(
        f"case {case_id!r}: {failed} failed on the {modality} network "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
        f"falling back to {used}",
        ExplainerFallbackWarning,
        stacklevel=3,
    )


_ATTRIBUTION_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError, NotImplementedError)


def _first_working(
    methods: Sequence[str], attempt: Callable[[str], np.ndarray], case_id: Any, modality: str
) -> tuple[np.ndarray, str]:
    """Run ``attempt(method)`` for each method in turn until one works.

    Each failure before the last warns with an :class:`ExplainerFallbackWarning`
    naming the method that failed and the one used instead.

    Raises:
        ConfigError: no method worked.
    """
    last: BaseException | None = None
    for k, method in enumerate(methods):
        try:
            return attempt(method), method
        except _ATTRIBUTION_ERRORS as e:
            last = e
            if k + 1 < len(methods):
                _fallback(case_id, modality, method, e, methods[k + 1])
    raise ConfigError(
        f"no {modality} attribution method worked (tried {list(methods)}): {last}",
        case_id=case_id,
        field=modality,
    ) from last


class _eval_mode:
    """Context manager: module in eval mode, restored afterwards; numpy's global RNG restored."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> nn.Module:
        self.was = self.module.training
        self.rng = np.random.get_state()
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was)
        np.random.set_state(self.rng)


def _explanation(values: np.ndarray, base: float, data: Any, method: str, **extra: Any) -> Any:
    shap = import_shap()
    exp = shap.Explanation(values=values, base_values=base, data=data, **extra)
    exp.method = method  # which algorithm produced the values (after any fallback)
    return exp


# --------------------------------------------------------------------------- images
def explain_image(
    model: Any,
    case: dict[str, Any],
    *,
    background: np.ndarray | None = None,
    methods: Sequence[str] = ("gradient_shap", "integrated_gradients", "occlusion"),
    n_samples: int = 200,
    seed: int = 0,
) -> Any:
    """Voxel attributions of the image's logit (the target of :func:`attribution_target`).

    Args:
        model: a FusionModel.
        case: a loaded case with ``image`` (C, X, Y) or (C, X, Y, Z) (MONAI axis
            order: X = DICOM columns).
        background: (K, C, *spatial) reference images (other cases); default a
            single all-zero image (the mean intensity after z-scoring).
        methods: tried in order until one works: ``gradient_shap``
            (``shap.GradientExplainer``, expected gradients), ``integrated_gradients``
            and ``occlusion`` (Captum).
        n_samples: GradientExplainer samples / Integrated Gradients steps.

    Returns:
        ``shap.Explanation``: ``values`` like ``data`` (C, *spatial), ``base_values``
        the mean logit of the background, ``method`` the method used, ``heatmap``
        (``*spatial``) the channel-summed attribution, and for 3-D images
        ``slice_mass`` (Z,) the share of |attribution| on each slice.
    """
    _require(case, "image", model)
    x_np = np.asarray(case["image"], dtype=np.float32)
    x = torch.from_numpy(x_np)[None]
    if background is None or len(background) == 0:
        bg = torch.zeros_like(x)
    else:
        bg = torch.from_numpy(np.asarray(background, dtype=np.float32))
    head, target = attribution_target(model, case, "image")
    net = UnimodalLogit(model, "image", head=head)
    device = model.device
    with _eval_mode(net):
        with torch.no_grad():
            base = float(net(bg.to(device)).mean())
        values, used = _first_working(
            methods,
            lambda method: _image_attribution(
                net, x.to(device), bg.to(device), method, n_samples, seed
            ),
            case.get("case_id"),
            "image",
        )
    heat = values.sum(axis=0)
    exp = _explanation(values, base, x_np, used)
    exp.target = target
    exp.heatmap = heat
    if heat.ndim == 3:
        mass = np.abs(heat).sum(axis=(0, 1))
        exp.slice_mass = mass / max(float(mass.sum()), 1e-12)
    return exp


def _image_attribution(
    net: nn.Module, x: torch.Tensor, bg: torch.Tensor, method: str, n_samples: int, seed: int
) -> np.ndarray:
    if method == "gradient_shap":
        shap = import_shap()
        explainer = shap.GradientExplainer(net, bg, batch_size=min(50, n_samples))
        out = explainer.shap_values(x, nsamples=n_samples, rseed=seed)
        arr = np.asarray(out[0] if isinstance(out, list) else out)
        if arr.ndim == x.ndim + 1:  # trailing output axis
            arr = arr[..., 0]
        return np.asarray(arr[0], dtype=np.float64)
    captum_attr = import_captum_attr()
    if method == "integrated_gradients":
        ref = bg.mean(dim=0, keepdim=True)
        ig = captum_attr.IntegratedGradients(lambda t: net(t)[:, 0])
        attr, _delta = ig.attribute(
            x, baselines=ref, n_steps=max(8, n_samples // 4), return_convergence_delta=True
        )
        return attr[0].detach().cpu().numpy().astype(np.float64)
    if method == "occlusion":
        spatial = x.shape[2:]
        win = tuple(max(1, s // 8) for s in spatial)
        occ = captum_attr.Occlusion(lambda t: net(t)[:, 0])
        attr = occ.attribute(
            x,
            sliding_window_shapes=(x.shape[1], *win),
            strides=(x.shape[1], *tuple(max(1, w // 2) for w in win)),
            baselines=0.0,
        )
        return attr[0].detach().cpu().numpy().astype(np.float64)
    raise ValueError(f"unknown image attribution method {method!r}")


def lesion_mask(
    spatial_size: Sequence[int],
    original_shape: tuple[int, int],
    row: float,
    col: float,
    radius: float,
) -> np.ndarray:
    """Disc mask of a lesion given in the DICOM grid, mapped onto the model's (X, Y) grid.

    The model sees ``pixel_array.T`` (X = column, Y = row) resized to
    ``spatial_size``; pixel centres map linearly between the two grids.

    Args:
        spatial_size: the model's (X, Y).
        original_shape: the DICOM (rows, columns).
        row, col, radius: lesion centre and radius in DICOM pixels.

    Returns:
        (X, Y) bool.
    """
    sx, sy = int(spatial_size[0]), int(spatial_size[1])
    rows, cols = original_shape
    xs = (np.arange(sx) + 0.5) * cols / sx - 0.5  # DICOM column of each model x
    ys = (np.arange(sy) + 0.5) * rows / sy - 0.5  # DICOM row of each model y
    cc, rr = np.meshgrid(xs, ys, indexing="ij")
    return np.asarray((cc - col) ** 2 + (rr - row) ** 2 <= radius**2)


def image_lesion_mass(heatmap: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Share of the heat map's absolute mass inside ``mask``, and the mask's area share.

    A map that ignores the lesion gets a mass share near the area share.
    """
    a = np.abs(np.asarray(heatmap, dtype=float))
    total = float(a.sum())
    inside = float(a[mask].sum()) / total if total > 0 else float("nan")
    return inside, float(mask.mean())


# --------------------------------------------------------------------------- signals
def explain_signal(
    model: Any,
    case: dict[str, Any],
    *,
    segment_seconds: float = 0.5,
    methods: Sequence[str] = ("occlusion", "gradient_shap"),
    background: np.ndarray | None = None,
    n_samples: int = 100,
) -> Any:
    """Time-segment attributions of the signal's logit, per lead (see :func:`attribution_target`).

    Occlusion: each (lead, segment) is replaced by 0 (the lead mean after
    standardisation) and the drop of the logit is its attribution, spread
    over the segment's samples (Captum ``FeatureAblation`` with a segment mask).

    Args:
        case: a loaded case with ``signal`` (L, T) and ``signal_meta`` (``fs``,
            ``valid_mask``, ``lead_names``).
        segment_seconds: segment length.
        methods: tried in order: ``occlusion`` (Captum) then ``gradient_shap``.

    Returns:
        ``shap.Explanation`` with ``values`` (L, T), ``data`` the signal,
        ``method``, ``segments`` (S, 2) start/stop sample of each segment,
        ``segment_values`` (L, S), ``fs`` and ``lead_names``.
    """
    _require(case, "signal", model)
    sig = np.asarray(case["signal"], dtype=np.float32)
    meta = case.get("signal_meta") or {}
    fs = float(meta.get("fs") or model.config.data.signal.target_fs)
    n_leads, n_t = sig.shape
    valid = np.asarray(meta.get("valid_mask", np.ones(n_t, bool)), dtype=bool)
    if valid.shape != (n_t,):
        valid = np.ones(n_t, bool)
    lead_names = list(meta.get("lead_names") or [f"lead_{k}" for k in range(n_leads)])[:n_leads]
    width = max(1, round(segment_seconds * fs))
    starts = np.arange(0, n_t, width)
    segments = np.stack([starts, np.minimum(starts + width, n_t)], axis=1)
    seg_id = np.repeat(np.arange(len(starts)), width)[:n_t]
    feature_mask = torch.from_numpy(
        (np.arange(n_leads)[:, None] * len(starts) + seg_id[None, :]).astype(np.int64)
    )[None]
    valid_t = torch.from_numpy(valid)

    def wrap(t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"signal": t, "valid_mask": valid_t.to(t.device).expand(t.shape[0], -1)}

    head, target = attribution_target(model, case, "signal")
    net = UnimodalLogit(model, "signal", wrap, head=head)
    device = model.device
    x = torch.from_numpy(sig)[None].to(device)

    def attempt(method: str) -> np.ndarray:
        if method == "occlusion":
            captum_attr = import_captum_attr()
            ablation = captum_attr.FeatureAblation(lambda t: net(t)[:, 0])
            attr = ablation.attribute(
                x,
                baselines=0.0,
                feature_mask=feature_mask.to(device),
                perturbations_per_eval=16,
            )
            return np.asarray(attr[0].detach().cpu().numpy(), dtype=np.float64)
        if method == "gradient_shap":
            shap = import_shap()
            bg = (
                torch.zeros_like(x)
                if background is None or len(background) == 0
                else torch.from_numpy(np.asarray(background, np.float32)).to(device)
            )
            explainer = shap.GradientExplainer(net, bg)
            out = np.asarray(explainer.shap_values(x, nsamples=n_samples, rseed=0))
            return np.asarray((out[..., 0] if out.ndim == 4 else out)[0], dtype=np.float64)
        raise ValueError(f"unknown signal attribution method {method!r}")

    with _eval_mode(net):
        with torch.no_grad():
            base = float(net(torch.zeros_like(x))[0, 0])
        values, used = _first_working(methods, attempt, case.get("case_id"), "signal")
    seg_values = np.stack(
        [values[:, a:b].mean(axis=1) if used != "occlusion" else values[:, a] for a, b in segments],
        axis=1,
    )
    exp = _explanation(values, base, sig, used)
    exp.target = target
    exp.segments = segments
    exp.segment_values = seg_values
    exp.fs = fs
    exp.lead_names = lead_names
    return exp


# --------------------------------------------------------------------------- notes
def explain_note(
    model: Any, case: dict[str, Any], *, max_evals: int = 200, batch_size: int = 16
) -> Any:
    """Token-level SHAP values of the note's logit (the target of :func:`attribution_target`).

    Uses ``shap.maskers.Text`` with the note encoder's own tokenizer (masked
    tokens become ``[MASK]``) and the Partition explainer; ``max_evals`` caps
    the model calls (about 10 s per note on CPU at 200 for MiniLM). An encoder
    without a Hugging Face tokenizer falls back to a word-level regex masker
    (with an :class:`ExplainerFallbackWarning`).

    Returns:
        ``shap.Explanation`` with ``values`` (n_tokens,), ``data`` the token
        strings (with their whitespace), ``base_values`` the logit of the fully
        masked note and ``method``.
    """
    shap = import_shap()
    _require(case, "note", model)
    text = str(case["note"])
    encoder = model.network.encoders["note"]
    head, target = attribution_target(model, case, "note")
    device = model.device

    def f(texts: Any) -> np.ndarray:
        items = [str(t) for t in np.asarray(texts, dtype=object).reshape(-1)]
        out = []
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                from clinfuse.model import move_batch

                inputs = move_batch({"x": encoder.collate(chunk)}, device)["x"]
                out.append(head(encoder(inputs).float())[:, 0].cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    tokenizer = getattr(encoder, "tokenizer", None)
    method = "partition_text"
    if tokenizer is not None:
        masker = shap.maskers.Text(tokenizer)
    else:
        warnings.warn(
            f"case {case.get('case_id')!r}: the note encoder has no Hugging Face tokenizer; "
            "falling back to a word-level regex masker",
            ExplainerFallbackWarning,
            stacklevel=2,
        )
        masker = shap.maskers.Text(r"\W+")
        method = "partition_text_words"
    with _eval_mode(encoder), _eval_mode(head):
        explainer = shap.Explainer(f, masker, seed=0)
        exp = explainer([text], max_evals=max_evals, batch_size=batch_size, silent=True)[0]
    exp.method = method
    exp.target = target
    return exp


# --------------------------------------------------------------------------- tabular
class _GroupMasker:
    """shap callable masker over manifest columns: a removed column is marked missing
    (NaN → mask 0), as the tabular encoder treats an empty cell.

    The players are columns while the model sees encoded features (a categorical
    column is several one-hot features), so the case's encoded row is held here
    and shap's ``x`` is only the (n_columns,) placeholder.
    """

    def __init__(self, row: np.ndarray, groups: np.ndarray, n_groups: int) -> None:
        self.row = row  # (F,) encoded values, NaN where missing
        self.groups = groups  # (F,) column index of each encoded feature
        self.shape = (1, n_groups)

    def __call__(self, mask: np.ndarray, x: np.ndarray) -> np.ndarray:
        keep = np.asarray(mask, dtype=bool)[self.groups]
        return np.where(keep, self.row, np.nan)[None]


def _feature_groups(tabular: Any) -> tuple[list[str], np.ndarray]:
    """Manifest columns and, for each encoded feature, the column it comes from."""
    groups: list[int] = []
    for j, col in enumerate(tabular.columns):
        if tabular.kinds_[col] == "numeric":
            groups.append(j)
        else:
            groups.extend([j] * len(tabular.categories_[col]))
    return list(tabular.columns), np.asarray(groups, dtype=int)


def _raw_display(tabular: Any, values: np.ndarray, mask: np.ndarray) -> list[Any]:
    """Per manifest column, the value in its original units (None if missing)."""
    out: list[Any] = []
    j = 0
    for col in tabular.columns:
        if tabular.kinds_[col] == "numeric":
            out.append(
                float(values[j] * tabular.stds_[col] + tabular.means_[col]) if mask[j] else None
            )
            j += 1
        else:
            levels = tabular.categories_[col]
            block = values[j : j + len(levels)]
            out.append(levels[int(np.argmax(block))] if mask[j] else None)
            j += len(levels)
    return out


def explain_tabular(model: Any, case: dict[str, Any], *, max_exact_columns: int = 12) -> Any:
    """SHAP values of the tabular logit, one per manifest column (see :func:`attribution_target`).

    The value of a set of columns is the logit when only those columns are
    observed (the others marked missing, exactly as an empty manifest cell),
    so a column that is missing for this case gets 0. Exact
    (``shap.ExactExplainer``, 2^F calls) up to ``max_exact_columns`` columns,
    else ``shap.PermutationExplainer``.

    Returns:
        ``shap.Explanation`` with ``values`` (F,), ``data`` the values in
        original units (None where missing), ``feature_names`` the columns,
        ``base_values`` the logit with nothing observed, ``method``.
    """
    shap = import_shap()
    _require(case, "tabular", model)
    tab = model.tabular
    if tab is None:
        raise ConfigError("the run has no fitted tabular encoder", field="tabular")
    columns, groups = _feature_groups(tab)
    values = np.asarray(case["tabular"], dtype=np.float64)
    mask = np.asarray(case["tabular_mask"], dtype=bool)
    row = np.where(mask, values, np.nan)
    x = np.arange(len(columns), dtype=np.float64)[None]  # placeholder, see _GroupMasker
    encoder = model.network.encoders["tabular"]
    head, target = attribution_target(model, case, "tabular")
    device = model.device

    def f(rows: np.ndarray) -> np.ndarray:
        arr = np.asarray(rows, dtype=np.float64)
        observed = np.isfinite(arr)
        batch = {
            "values": torch.from_numpy(np.where(observed, arr, 0.0).astype(np.float32)).to(device),
            "mask": torch.from_numpy(observed.astype(np.float32)).to(device),
        }
        with torch.no_grad():
            return head(encoder(batch).float())[:, 0].cpu().numpy().astype(np.float64)

    masker = _GroupMasker(row, groups, len(columns))
    with _eval_mode(encoder), _eval_mode(head):
        if len(columns) <= max_exact_columns:
            explainer = shap.ExactExplainer(f, masker, feature_names=columns)
            method = "exact"
            e = explainer(x, silent=True)
        else:
            explainer = shap.PermutationExplainer(f, masker, feature_names=columns, seed=0)
            method = "permutation"
            e = explainer(x, max_evals=max(500, 2 * len(columns) + 1), silent=True)
    data = np.asarray(_raw_display(tab, values, mask), dtype=object)
    phi = np.asarray(e.values[0], dtype=np.float64)
    observed = np.zeros(len(columns), dtype=bool)
    observed[groups[mask]] = True
    phi[~observed] = 0.0  # a missing column is a null player (drop rounding noise)
    exp = _explanation(
        phi,
        float(np.asarray(e.base_values).reshape(-1)[0]),
        data,
        method,
        feature_names=columns,
    )
    exp.target = target
    return exp
