"""How many cases an external validation needs (TRIPOD+AI item 9: study size).

Before a model is validated at a new site, the number of cases to collect should follow
from the precision wanted for the figures that decide whether it can be used there.
:func:`validation_sample_size` implements the criteria of Riley et al. (Stat Med 2021;
40:4230–51), as in their ``pmvalsampsize`` software, for a binary outcome:

1. **O/E** (calibration-in-the-large): ``N = (1 − φ) / (φ · SE(ln O/E)²)``, with the SE
   that gives the target CI width around the anticipated O/E.
2. **Calibration slope**: ``N = I₀₀ / (SE² (I₀₀ I₁₁ − I₀₁²))``, the elements of the
   Fisher information of the calibration model ``logit P(y) = β₀ + β₁·LP`` at β₀ = 0,
   β₁ = 1 taken over the distribution of the linear predictor (LP, the logit of the
   predicted risk): normal or beta-distributed risks (adaptive quadrature), or the
   model's own predictions on a cohort (their mean).
3. **C-statistic**: the smallest N whose CI width from Newcombe's SE,
   ``SE² = C(1−C)(1 + (N/2 − 1)(1−C)/(2−C) + (N/2 − 1)C/(1+C)) / (N² φ(1−φ))``,
   is at most the target.
4. **Net benefit** (optional, at a risk threshold): from the anticipated sensitivity and
   specificity — given, or implied by the LP distribution — the N giving the target CI
   width of the standardised net benefit (net benefit / φ).

The answer is the largest N. Intervals use z = 1.96, as the published method does. The
package's O/E step searches the SE on a 1e-4 grid and so can give one case fewer; here
the SE is solved exactly.

Before a model is *developed* (TRIPOD+AI item 9 again), :func:`development_sample_size`
applies the criteria of Riley et al. (Stat Med 2019;38:1276–96; BMJ 2020;368:m441), as in
their ``pmsampsize`` software, for a binary outcome and P candidate predictor parameters
with an anticipated Cox–Snell R² (R²_CS):

1. **Shrinkage** ≥ S (0.9): ``N = P / ((S − 1) ln(1 − R²_CS / S))``.
2. **Optimism**: apparent and adjusted Nagelkerke R² differ by ≤ δ (0.05): criterion 1
   with ``S = R²_CS / (R²_CS + δ · max R²_CS)``, ``max R²_CS = 1 − exp(2 ln L_null / N)``.
3. **Intercept**: the overall risk within ± 0.05: ``N = (1.96 / 0.05)² φ(1 − φ)``.

R²_CS may come from a Nagelkerke R² (× max R²_CS) or from an anticipated C-statistic
(Riley, Van Calster and Collins, Stat Med 2021;40:859–64): with normal linear predictors of equal variance
in events and non-events — means √2 Φ⁻¹(C) apart — the log-odds are linear in the
predictor, and R²_CS = 1 − exp(−2 I), I the expected log-likelihood gain per case of the
true model over the null model; here I is integrated exactly (``pmsampsize`` fits a
logistic regression to a simulated million cases).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate
from scipy.special import expit
from scipy.stats import beta as beta_dist
from scipy.stats import norm

from clinfuse.errors import ConfigError

__all__ = [
    "DevelopmentSampleSize",
    "SampleSize",
    "cox_snell_r2_from_c",
    "development_from_evaluation",
    "development_sample_size",
    "from_evaluation",
    "validation_sample_size",
]

Z = 1.96


@dataclass
class SampleSize:
    """The minimum validation sample size and how each criterion contributes.

    Attributes:
        n: the minimum number of cases (the largest criterion).
        prevalence: the anticipated outcome proportion.
        criteria: one dict per criterion: ``criterion``, ``anticipated``, ``se``,
            ``ci_width``, ``n``, ``events`` (and the sensitivity/specificity used
            for net benefit).
        lp: how the linear predictor's distribution was given.
    """

    n: int
    prevalence: float
    criteria: list[dict[str, Any]]
    lp: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> float:
        """Expected events among the ``n`` cases (``n · prevalence``)."""
        return self.n * self.prevalence

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "clinfuse.samplesize.v1",
            "n": self.n,
            "events": self.events,
            "prevalence": self.prevalence,
            "criteria": self.criteria,
            "lp": self.lp,
            "method": "Riley et al. 2021 (Stat Med 40:4230-51), binary outcome",
        }


def _check_unit(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    value = float(value)
    if not (low < value < high) or np.isnan(value):
        raise ConfigError(f"{name} is {value}; it must lie in ({low:g}, {high:g})", field=name)
    return value


def _check_width(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ConfigError(f"{name} is {value}; a CI width must be positive", field=name)
    return value


def _lp_expectation(lp: dict[str, Any]) -> Any:
    """``expect(f, breaks)`` = ``E[f(LP)]`` under the given LP distribution; ``breaks``
    are LP values where ``f`` jumps (adaptive quadrature splits there)."""
    kind = lp["kind"]
    if kind == "normal":
        mean, sd = lp["mean"], lp["sd"]
        low, high = mean - 12 * sd, mean + 12 * sd

        def expect_normal(f: Any, breaks: Sequence[float] = ()) -> float:
            inside = [b for b in breaks if low < b < high]
            value, _ = integrate.quad(
                lambda x: float(f(x)) * norm.pdf(x, mean, sd),
                low,
                high,
                points=inside or None,
                limit=400,
            )
            return float(value)

        return expect_normal
    if kind == "beta":
        a, b = lp["a"], lp["b"]

        def expect_beta(f: Any, breaks: Sequence[float] = ()) -> float:
            def g(p: float) -> float:
                return float(f(np.log(p / (1 - p))) * beta_dist.pdf(p, a, b))

            points = sorted({0.5, *(float(expit(x)) for x in breaks)})
            value, _ = integrate.quad(g, 0, 1, limit=400, points=points)
            return float(value)

        return expect_beta
    x = np.asarray(lp["values"], dtype=float)
    return lambda f, breaks=(): float(np.mean(f(x)))


def _slope_information(expect: Any) -> tuple[float, float, float]:
    def w(x: np.ndarray) -> np.ndarray:
        p = expit(x)
        return p * (1 - p)

    i00 = expect(w)
    i01 = expect(lambda x: x * w(x))
    i11 = expect(lambda x: x * x * w(x))
    return i00, i01, i11


def _c_statistic_n(c: float, prevalence: float, width: float) -> tuple[int, float]:
    """Smallest N with Newcombe CI width ≤ ``width`` (searched as the package does)."""

    def se(n: np.ndarray) -> np.ndarray:
        half = n / 2 - 1
        var = (
            c
            * (1 - c)
            * (1 + half * (1 - c) / (2 - c) + half * c / (1 + c))
            / (n * n * prevalence * (1 - prevalence))
        )
        return np.sqrt(np.maximum(var, 0))

    start = 1
    chunk = 1_000_000
    while start <= 100_000_000:
        n = np.arange(start, start + chunk, dtype=float)
        ok = np.flatnonzero(2 * Z * se(n) <= width)
        if len(ok):
            n_min = int(n[ok[0]])
            return n_min, float(se(np.array([float(n_min)]))[0])
        start += chunk
    raise ConfigError(  # pragma: no cover - widths this small are not asked for
        f"no sample size up to 10^8 gives a C-statistic CI width of {width}",
        field="c_ci_width",
    )


def validation_sample_size(
    *,
    prevalence: float,
    c_statistic: float,
    lp_normal: tuple[float, float] | None = None,
    lp_beta: tuple[float, float] | None = None,
    lp_values: Sequence[float] | np.ndarray | None = None,
    oe: float = 1.0,
    oe_ci_width: float = 0.2,
    slope: float = 1.0,
    slope_ci_width: float = 0.2,
    c_ci_width: float = 0.1,
    threshold: float | None = None,
    sensitivity: float | None = None,
    specificity: float | None = None,
    nb_ci_width: float = 0.2,
) -> SampleSize:
    """Minimum sample size to externally validate a risk model (binary outcome).

    Args:
        prevalence: anticipated outcome proportion in the validation population.
        c_statistic: anticipated C-statistic (AUROC) there.
        lp_normal: ``(mean, sd)`` of a normal linear predictor (logit of the risk).
        lp_beta: ``(a, b)`` of beta-distributed predicted risks.
        lp_values: the linear predictor of a set of cases (e.g. the model's
            ``logit(p_fusion)`` on an earlier cohort). Exactly one of the three.
        oe: anticipated O/E; ``oe_ci_width`` its target CI width.
        slope: anticipated calibration slope (the information is computed at slope 1,
            as in the published method); ``slope_ci_width`` its target CI width.
        c_ci_width: target CI width of the C-statistic.
        threshold: risk threshold for the net-benefit criterion (None skips it).
        sensitivity, specificity: anticipated at ``threshold``; when not given they
            come from the LP distribution, taking the risks as calibrated.
        nb_ci_width: target CI width of the standardised net benefit.

    Returns:
        :class:`SampleSize`.

    Raises:
        ConfigError: a value out of range, or not exactly one LP distribution.
    """
    phi = _check_unit("prevalence", prevalence)
    c = _check_unit("c_statistic", c_statistic, low=0.5)
    for name, value in (
        ("oe_ci_width", oe_ci_width),
        ("slope_ci_width", slope_ci_width),
        ("c_ci_width", c_ci_width),
        ("nb_ci_width", nb_ci_width),
    ):
        _check_width(name, value)
    if not oe > 0:
        raise ConfigError(f"oe is {oe}; an O/E ratio must be positive", field="oe")
    given = [x is not None for x in (lp_normal, lp_beta, lp_values)]
    if sum(given) != 1:
        raise ConfigError(
            "give exactly one distribution of the linear predictor",
            field="lp",
            hint="--lp-normal MEAN,SD, --lp-beta A,B, or --from an evaluation folder",
        )
    lp: dict[str, Any]
    if lp_normal is not None:
        mean, sd = (float(v) for v in lp_normal)
        if not sd > 0:
            raise ConfigError(f"the LP's SD is {sd}; it must be positive", field="lp_normal")
        lp = {"kind": "normal", "mean": mean, "sd": sd}
    elif lp_beta is not None:
        a, b = (float(v) for v in lp_beta)
        if not (a > 0 and b > 0):
            raise ConfigError(f"beta parameters {a}, {b} must be positive", field="lp_beta")
        lp = {"kind": "beta", "a": a, "b": b}
    else:
        values = np.asarray(lp_values, dtype=float)
        if values.ndim != 1 or len(values) < 10 or not np.all(np.isfinite(values)):
            raise ConfigError(
                f"{values.size} linear-predictor values given; at least 10 finite ones are needed",
                field="lp_values",
            )
        lp = {"kind": "empirical", "values": values}
    expect = _lp_expectation(lp)
    criteria: list[dict[str, Any]] = []

    # 1. O/E: width = OE (e^{z se} − e^{−z se}) = 2 OE sinh(z se)
    se_oe = float(np.arcsinh(oe_ci_width / (2 * oe)) / Z)
    n1 = int(np.ceil((1 - phi) / (phi * se_oe**2)))
    criteria.append(
        {
            "criterion": "O/E",
            "anticipated": float(oe),
            "se": se_oe,
            "ci_width": oe_ci_width,
            "n": n1,
        }
    )

    # 2. calibration slope
    i00, i01, i11 = _slope_information(expect)
    det = i00 * i11 - i01 * i01
    if not det > 0:
        raise ConfigError(
            "the linear predictor does not vary: its calibration slope cannot be estimated",
            field="lp",
        )
    se_slope = slope_ci_width / (2 * Z)
    n2 = int(np.ceil(i00 / (se_slope**2 * det)))
    criteria.append(
        {
            "criterion": "calibration slope",
            "anticipated": float(slope),
            "se": se_slope,
            "ci_width": slope_ci_width,
            "n": n2,
        }
    )

    # 3. C-statistic
    n3, se_c = _c_statistic_n(c, phi, c_ci_width)
    criteria.append(
        {"criterion": "C-statistic", "anticipated": c, "se": se_c, "ci_width": c_ci_width, "n": n3}
    )

    # 4. net benefit
    if threshold is not None:
        t = _check_unit("threshold", threshold)
        if (sensitivity is None) != (specificity is None):
            raise ConfigError(
                "give both sensitivity and specificity, or neither (then they come from "
                "the linear predictor's distribution)",
                field="sensitivity",
            )
        if sensitivity is None:
            cut = [float(np.log(t / (1 - t)))]
            risk = expect(expit)
            sens = expect(lambda x: expit(x) * (expit(x) >= t), cut) / risk
            spec = expect(lambda x: (1 - expit(x)) * (expit(x) < t), cut) / (1 - risk)
        else:
            sens = _check_unit("sensitivity", sensitivity, low=0.0)
            spec = _check_unit("specificity", float(specificity))  # type: ignore[arg-type]
        w = (1 - phi) / phi * t / (1 - t)
        nb = sens * phi - (1 - spec) * (1 - phi) * t / (1 - t)
        se_nb = nb_ci_width / (2 * Z)
        n4 = int(
            np.ceil(
                (
                    sens * (1 - sens) / phi
                    + w * w * spec * (1 - spec) / (1 - phi)
                    + w * w * (1 - spec) ** 2 / (phi * (1 - phi))
                )
                / se_nb**2
            )
        )
        criteria.append(
            {
                "criterion": f"net benefit at {t:g}",
                "anticipated": nb / phi,
                "se": se_nb,
                "ci_width": nb_ci_width,
                "n": n4,
                "sensitivity": sens,
                "specificity": spec,
            }
        )
    for row in criteria:
        row["events"] = row["n"] * phi
    n = int(max(row["n"] for row in criteria))
    described = {k: v for k, v in lp.items() if k != "values"}
    if lp["kind"] == "empirical":
        described.update(
            n=len(lp["values"]), mean=float(lp["values"].mean()), sd=float(lp["values"].std())
        )
    return SampleSize(n=n, prevalence=phi, criteria=criteria, lp=described)


def _evaluation_outcomes(folder: str | Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """Outcomes and fused risks (clipped away from 0 and 1) of an evaluation folder."""
    from clinfuse.evaluation.compare import read_evaluation

    source = read_evaluation(Path(folder))
    path = source.folder / "predictions.csv"
    frame = source.predictions[["label", "p_fusion"]].dropna()
    y = frame["label"].to_numpy(dtype=float)
    p = np.clip(frame["p_fusion"].to_numpy(dtype=float), 1e-12, 1 - 1e-12)
    if len(np.unique(y)) < 2:
        raise ConfigError(
            "the evaluation's cases have one outcome only; prevalence and C-statistic are "
            "undefined",
            path=path,
            hint="give --prevalence and --c-statistic instead",
        )
    return y, p, path


def from_evaluation(folder: str | Path, **targets: Any) -> SampleSize:
    """The sample size to validate an evaluated model again elsewhere, taking the
    prevalence, C-statistic and linear-predictor distribution from an evaluation (or
    cross-validation) folder's ``predictions.csv``; ``targets`` as for
    :func:`validation_sample_size` (given values override the evaluation's).

    Raises:
        ConfigError: the folder holds no predictions with both outcomes.
    """
    from sklearn.metrics import roc_auc_score

    y, p, path = _evaluation_outcomes(folder)
    targets.setdefault("prevalence", float(y.mean()))
    if "c_statistic" not in targets:
        c = float(roc_auc_score(y, p))
        if not c > 0.5:
            raise ConfigError(
                f"the evaluation's AUROC is {c:.3f}, not above 0.5, so it cannot stand for the "
                "C-statistic the new validation is planned around",
                field="c_statistic",
                path=path,
                hint="give the C-statistic you expect with --c-statistic",
            )
        targets["c_statistic"] = c
    result = validation_sample_size(lp_values=np.log(p / (1 - p)), **targets)
    result.lp["source"] = str(path)
    return result


# -- development ----------------------------------------------------------------------------
@dataclass
class DevelopmentSampleSize:
    """The minimum sample size to develop a risk model, by Riley et al.'s criteria.

    Attributes:
        n: the minimum number of cases (the largest criterion).
        prevalence: the anticipated outcome proportion.
        parameters: candidate predictor parameters.
        r2_cs: anticipated Cox–Snell R² (and ``r2_source``: how it was obtained).
        max_r2_cs: the largest Cox–Snell R² this prevalence allows.
        shrinkage: the shrinkage expected at ``n`` (≥ the target).
        criteria: one dict per criterion: ``criterion``, ``n``, ``shrinkage``, ``events``,
            ``epp`` (events per candidate parameter).
    """

    n: int
    prevalence: float
    parameters: int
    r2_cs: float
    r2_source: str
    max_r2_cs: float
    shrinkage: float
    criteria: list[dict[str, Any]]

    @property
    def events(self) -> float:
        """Expected events among the ``n`` cases."""
        return self.n * self.prevalence

    @property
    def epp(self) -> float:
        """Events per candidate predictor parameter at ``n``."""
        return self.events / self.parameters

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "clinfuse.samplesize.development.v1",
            "n": self.n,
            "events": self.events,
            "epp": self.epp,
            "prevalence": self.prevalence,
            "parameters": self.parameters,
            "r2_cs": self.r2_cs,
            "r2_source": self.r2_source,
            "max_r2_cs": self.max_r2_cs,
            "r2_nagelkerke": self.r2_cs / self.max_r2_cs,
            "shrinkage": self.shrinkage,
            "criteria": self.criteria,
            "method": "Riley et al. 2019 (Stat Med 38:1276-96) / 2020 (BMJ 368:m441), "
            "binary outcome",
        }


def _max_r2_cs(prevalence: float) -> float:
    null = prevalence * np.log(prevalence) + (1 - prevalence) * np.log(1 - prevalence)
    return float(1 - np.exp(2 * null))


def cox_snell_r2_from_c(c_statistic: float, prevalence: float) -> float:
    """The Cox–Snell R² of a model with this C-statistic at this prevalence.

    Events' and non-events' linear predictors are taken as normal with unit variance and
    means √2 Φ⁻¹(C) apart (so the AUROC is C); the log-odds of the outcome are then linear
    in the predictor, and R²_CS = 1 − exp(−2 I) with I the expected per-case log-likelihood
    of that model minus the null model's, integrated by quadrature.

    Raises:
        ConfigError: ``c_statistic`` not in (0.5, 1) or ``prevalence`` not in (0, 1).
    """
    phi = _check_unit("prevalence", prevalence)
    c = _check_unit("c_statistic", c_statistic, low=0.5)
    mu = float(np.sqrt(2) * norm.ppf(c))
    offset = float(np.log(phi / (1 - phi))) - mu * mu / 2

    def log_risk(x: float, event: bool) -> float:  # log P(y | x), stable for large |x|
        z = offset + mu * x
        return float(-np.logaddexp(0.0, -z) if event else -np.logaddexp(0.0, z))

    def expect(event: bool) -> float:
        mean = mu if event else 0.0
        value, _ = integrate.quad(
            lambda x: log_risk(x, event) * norm.pdf(x, mean), mean - 12, mean + 12, limit=200
        )
        return float(value)

    null = phi * np.log(phi) + (1 - phi) * np.log(1 - phi)
    gain = phi * expect(True) + (1 - phi) * expect(False) - null
    return float(1 - np.exp(-2 * max(gain, 0.0)))


def _shrinkage_n(parameters: int, r2_cs: float, shrinkage: float) -> int:
    return int(np.ceil(parameters / ((shrinkage - 1) * np.log(1 - r2_cs / shrinkage))))


def development_sample_size(
    *,
    parameters: int,
    prevalence: float,
    r2_cs: float | None = None,
    r2_nagelkerke: float | None = None,
    c_statistic: float | None = None,
    shrinkage: float = 0.9,
    r2_difference: float = 0.05,
    intercept_margin: float = 0.05,
) -> DevelopmentSampleSize:
    """Minimum sample size to develop a risk model for a binary outcome (``pmsampsize``).

    Args:
        parameters: candidate predictor parameters (every coefficient the model may
            estimate: a categorical predictor with k levels counts k − 1, a spline more
            than one; for clinfuse's late-fusion combiner, one weight per modality).
        prevalence: anticipated outcome proportion.
        r2_cs, r2_nagelkerke, c_statistic: the anticipated performance — exactly one:
            Cox–Snell R², Nagelkerke R² (R²_CS / max R²_CS) or C-statistic
            (:func:`cox_snell_r2_from_c`). Without any published figure, Riley et al.
            suggest a conservative Nagelkerke R² of 0.15.
        shrinkage: target expected uniform shrinkage (criterion 1).
        r2_difference: largest acceptable optimism in Nagelkerke R² (criterion 2).
        intercept_margin: absolute margin of error of the overall risk (criterion 3).

    Returns:
        :class:`DevelopmentSampleSize`.

    Raises:
        ConfigError: a value out of range, not exactly one performance figure, or an
            R²_CS above what the prevalence allows or not below ``shrinkage``.
    """
    if isinstance(parameters, bool) or not isinstance(parameters, int | np.integer):
        raise ConfigError(f"parameters is {parameters!r}; give a whole number", field="parameters")
    if parameters < 1:
        raise ConfigError(
            f"parameters is {parameters}; count at least one candidate predictor parameter",
            field="parameters",
        )
    phi = _check_unit("prevalence", prevalence)
    shrink = _check_unit("shrinkage", shrinkage)
    delta = _check_unit("r2_difference", r2_difference)
    margin = _check_unit("intercept_margin", intercept_margin, high=0.5)
    given = [x is not None for x in (r2_cs, r2_nagelkerke, c_statistic)]
    if sum(given) != 1:
        raise ConfigError(
            "give exactly one anticipated performance figure",
            field="r2",
            hint="--r2-cs, --r2-nagelkerke or --c-statistic (with no published figure, "
            "Riley et al. suggest --r2-nagelkerke 0.15)",
        )
    max_r2 = _max_r2_cs(phi)
    if r2_cs is not None:
        r2, source = _check_unit("r2_cs", r2_cs), "Cox-Snell R2 given"
    elif r2_nagelkerke is not None:
        r2 = _check_unit("r2_nagelkerke", r2_nagelkerke) * max_r2
        source = f"Nagelkerke R2 {float(r2_nagelkerke):.3f} x max R2_CS"
    else:
        c = float(c_statistic)  # type: ignore[arg-type]
        r2, source = cox_snell_r2_from_c(c, phi), f"C-statistic {c:.3f} (binormal linear predictor)"
    if r2 >= max_r2:
        raise ConfigError(
            f"a Cox-Snell R2 of {r2:.3f} is above the largest possible at prevalence "
            f"{phi:g} ({max_r2:.3f})",
            field="r2_cs",
            hint="the Nagelkerke R2 is the Cox-Snell R2 divided by that maximum",
        )
    if r2 >= shrink:
        raise ConfigError(
            f"the Cox-Snell R2 ({r2:.3f}) must be below the target shrinkage ({shrink:g})",
            field="shrinkage",
        )
    s2 = r2 / (r2 + delta * max_r2)
    rows: list[dict[str, Any]] = [
        {"criterion": f"shrinkage >= {shrink:g}", "n": _shrinkage_n(parameters, r2, shrink)},
        {
            "criterion": f"optimism in Nagelkerke R2 <= {delta:g}",
            "n": _shrinkage_n(parameters, r2, s2),
        },
        {
            "criterion": f"overall risk within +/- {margin:g}",
            "n": int(np.ceil((Z / margin) ** 2 * phi * (1 - phi))),
        },
    ]
    n = int(max(row["n"] for row in rows))
    final_shrinkage = max(shrink, s2)
    for row, at in zip(rows, (shrink, s2, final_shrinkage), strict=True):
        row["shrinkage"] = float(at)
        row["events"] = row["n"] * phi
        row["epp"] = row["events"] / parameters
    return DevelopmentSampleSize(
        n=n,
        prevalence=phi,
        parameters=int(parameters),
        r2_cs=float(r2),
        r2_source=source,
        max_r2_cs=max_r2,
        shrinkage=float(final_shrinkage),
        criteria=rows,
    )


def development_from_evaluation(
    folder: str | Path, *, parameters: int, **targets: Any
) -> DevelopmentSampleSize:
    """The development sample size for a model like an evaluated one: prevalence and
    C-statistic from an evaluation (or cross-validation) folder's ``predictions.csv``
    (given values override them); ``targets`` as for :func:`development_sample_size`.

    Raises:
        ConfigError: the folder holds no predictions with both outcomes.
    """
    from sklearn.metrics import roc_auc_score

    y, p, path = _evaluation_outcomes(folder)
    targets.setdefault("prevalence", float(y.mean()))
    if not any(targets.get(k) is not None for k in ("r2_cs", "r2_nagelkerke", "c_statistic")):
        targets["c_statistic"] = float(roc_auc_score(y, p))
    result = development_sample_size(parameters=parameters, **targets)
    result.r2_source += f"; from {path}"
    return result
