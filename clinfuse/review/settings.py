"""How the dashboard finds its run: environment variables set by ``clinfuse app``.

``streamlit run app/streamlit_app.py`` works too when these are set:

| variable | meaning |
| --- | --- |
| ``CLINFUSE_APP_RUN`` | the run folder, or a ``clinfuse crossval`` folder (required) |
| ``CLINFUSE_APP_PREDICTIONS`` | a ``clinfuse predict`` table to review instead of the run's own cases |
| ``CLINFUSE_APP_EXPLANATIONS`` | that table's explanations folder (default ``<P>.explanations``) |
| ``CLINFUSE_APP_DB`` | the review database (default ``<RUN>.reviews.sqlite`` beside the run, or ``<P>.reviews.sqlite`` beside the table) |
| ``CLINFUSE_APP_COHORT`` | the cohort manifest (default: the run's training manifest, or the scored one) |
| ``CLINFUSE_APP_EVALUATION`` | a ``clinfuse evaluate`` folder for the cohort page |
| ``CLINFUSE_APP_THRESHOLD`` | decision threshold on the calibrated risk (default 0.5) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clinfuse.errors import ConfigError

__all__ = ["ENV", "AppSettings"]

ENV = {
    "run": "CLINFUSE_APP_RUN",
    "db": "CLINFUSE_APP_DB",
    "cohort": "CLINFUSE_APP_COHORT",
    "evaluation": "CLINFUSE_APP_EVALUATION",
    "threshold": "CLINFUSE_APP_THRESHOLD",
    "predictions": "CLINFUSE_APP_PREDICTIONS",
    "explanations": "CLINFUSE_APP_EXPLANATIONS",
    "monitoring": "CLINFUSE_APP_MONITORING",
}


@dataclass(frozen=True)
class AppSettings:
    """The dashboard's settings (hashable: used as a cache key)."""

    run: Path
    db: Path
    cohort: Path | None = None
    evaluation: Path | None = None
    threshold: float | None = None
    predictions: Path | None = None
    explanations: Path | None = None
    monitoring: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppSettings:
        """Read the settings from the environment.

        Raises:
            ConfigError: no run given, or a threshold that is not a number.
        """
        from clinfuse.review.store import default_db_path

        env = os.environ if environ is None else environ
        run = env.get(ENV["run"], "").strip()
        if not run:
            raise ConfigError(
                f"no run folder given: set {ENV['run']}",
                hint="start the dashboard with `clinfuse app RUN`",
            )
        run_path = Path(run).expanduser()
        threshold = env.get(ENV["threshold"], "").strip()
        try:
            t = float(threshold) if threshold else None
        except ValueError:
            raise ConfigError(
                f"threshold must be a number, got {threshold!r}", field=ENV["threshold"]
            ) from None

        def path(key: str) -> Path | None:
            value = env.get(ENV[key], "").strip()
            return Path(value).expanduser() if value else None

        predictions = path("predictions")
        return cls(
            run=run_path,
            db=path("db") or default_db_path(run_path, predictions),
            cohort=path("cohort"),
            evaluation=path("evaluation"),
            threshold=t,
            predictions=predictions,
            explanations=path("explanations"),
            monitoring=path("monitoring"),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings."""
        out = {ENV["run"]: str(self.run), ENV["db"]: str(self.db)}
        if self.cohort is not None:
            out[ENV["cohort"]] = str(self.cohort)
        if self.evaluation is not None:
            out[ENV["evaluation"]] = str(self.evaluation)
        if self.threshold is not None:
            out[ENV["threshold"]] = repr(self.threshold)
        if self.predictions is not None:
            out[ENV["predictions"]] = str(self.predictions)
        if self.explanations is not None:
            out[ENV["explanations"]] = str(self.explanations)
        if self.monitoring is not None:
            out[ENV["monitoring"]] = str(self.monitoring)
        return out
