"""Every chart of the dashboard drawn by Vega in a real headless Chromium: AppTest checks
the specs Streamlit receives, not whether the browser can draw them. The ROC chart's zoom
selection sat at the top of a layered spec, which Vega refuses ("Duplicate signal name") —
the cohort page showed an empty ROC tab from the first version until this test."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from clinfuse.review.cli import streamlit_command
from tests.app.browser_support import (
    CHROMIUM_FLAGS,
    STARTUP_S,
    chromium,
    free_port,
    settled,
    wait_healthy,
)

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import streamlit as st

    from clinfuse.review import charts
    from clinfuse.evaluation.funnel import funnel_data
    from clinfuse.review.cohort import CohortResults, cohort_curves

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(float)
    fused = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.15, 300), 0.01, 0.99)
    image = np.where(rng.random(300) < 0.8, np.clip(fused + rng.normal(0, 0.1, 300), 0.01, 0.99), np.nan)
    res = CohortResults(source="synthetic", y=y, scores={"fusion": fused, "image": image},
                        aurocs={"fusion": 0.7, "image": 0.6})
    curves = cohort_curves(res, ["fusion", "image"])
    sites = np.repeat([f"s{k:02d}" for k in range(12)], 200)  # odds spread between sites
    p12 = rng.uniform(0.05, 0.6, len(sites))
    odds = p12 / (1 - p12) * np.exp(np.repeat(rng.normal(0, 0.5, 12), 200))
    y12 = (rng.random(len(sites)) < odds / (1 + odds)).astype(float)
    overdispersed = funnel_data(y12, p12, sites)
    assert overdispersed["dispersion"]["random_effects"]
    specs = {
        "roc": charts.roc_spec(curves["roc"], res.aurocs),
        "calibration": charts.calibration_spec(curves["calibration"]),
        "decision curve": charts.decision_curve_spec(curves["dca"], 0.6),
        "risk": charts.risk_spec(0.3, 0.2, 0.4, 0.5),
        "modalities": charts.modality_contribution_spec(
            {"image": 0.4, "note": -0.2, "signal": 0.0}, {"image": True, "note": True, "signal": False}, -0.8
        ),
        "funnel": charts.funnel_spec(
            funnel_data(y, fused, np.where(rng.random(300) < 0.5, "site_a", "site_b")), "site"
        ),
        "funnel, random effects": charts.funnel_spec(overdispersed, "site"),
        "signal": charts.signal_spec(
            rng.normal(size=(2, 500)), 100.0, ["I", "II"], segments_s=[(0.0, 2.5), (2.5, 5.0)],
            segment_values=np.array([[0.3, -0.1], [0.2, 0.0]]),
        ),
    }
    for name, spec in specs.items():
        st.subheader(name)
        st.vega_lite_chart(spec, width="stretch")
    """
)


def test_every_chart_is_drawn(tmp_path: Path) -> None:
    script = tmp_path / "charts_app.py"
    script.write_text(SCRIPT)
    port = free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    command = streamlit_command(script, host="127.0.0.1", port=port)
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium(), args=CHROMIUM_FLAGS, headless=True
            )
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 3000})
                page.set_default_timeout(STARTUP_S * 1000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url)
                settled(page)
                charts = page.locator('[data-testid="stVegaLiteChart"]')
                expect(charts).to_have_count(8)
                drawn = page.locator(
                    '[data-testid="stVegaLiteChart"] canvas, '
                    '[data-testid="stVegaLiteChart"] svg.marks'
                )
                expect(drawn).to_have_count(8)  # Vega drew each one
                heights = [charts.nth(i).bounding_box()["height"] for i in range(8)]
                assert all(h > 50 for h in heights), heights
                assert not errors, errors
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
