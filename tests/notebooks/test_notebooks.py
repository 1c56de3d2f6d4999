"""The researcher notebooks run top to bottom (nbclient), offline, on tiny settings.

Each notebook reads its size from ``CLINFUSE_NB_*`` environment variables; the
default suite sets tiny values (seconds of training), ``-m slow`` runs them at
the size a researcher would (their defaults). The kernel is this interpreter,
through a kernelspec written into a temporary folder, so the test never depends
on which Jupyter kernels the machine has installed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))

TINY = {
    "CLINFUSE_NB_CASES": "80",
    "CLINFUSE_NB_EPOCHS": "2",
    "CLINFUSE_NB_BOOT": "50",
    "CLINFUSE_NB_NOTE_EVALS": "12",
    "CLINFUSE_NB_SEEDS": "1",
    "CLINFUSE_NB_ROUNDS": "2",
    "CLINFUSE_NB_BATCH": "8",
    "CLINFUSE_NB_EPSILONS": "8",
}


def _kernel_manager(tmp: Path, env: dict[str, str]) -> KernelManager:
    """A kernel running this very interpreter (a kernelspec in ``tmp``, nothing installed)."""
    spec_dir = tmp / "kernels" / "clinfuse-nb"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "clinfuse notebooks test",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    ksm = KernelSpecManager(kernel_dirs=[str(tmp / "kernels")])
    return KernelManager(kernel_name="clinfuse-nb", kernel_spec_manager=ksm)


def run_notebook(
    name: str, tmp: Path, sizes: dict[str, str], timeout: int
) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` in ``tmp`` and return the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {
        **sizes,
        "CLINFUSE_NB_OUT": str(tmp / "out"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    work = tmp / "cwd"
    work.mkdir()
    km = _kernel_manager(tmp, env)
    client = NotebookClient(
        nb,
        km=km,
        timeout=timeout,
        resources={"metadata": {"path": str(work)}},
        allow_errors=False,
    )
    try:
        client.execute()
    finally:
        # nbclient shuts down only kernels it made itself: this one (and whatever processes
        # the notebook started) would otherwise live on in this test worker
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    return nb


def _outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            for key in ("text/plain", "text/html"):
                if key in out.get("data", {}):
                    parts.append(out["data"][key])
    return "\n".join(parts)


def _check_executed(name: str, nb: nbformat.NotebookNode, tmp: Path) -> None:
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{name}: a code cell did not run"
    images = sum(1 for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= 1, f"{name}: no figure was shown inline"
    text = _outputs_text(nb)
    assert "Traceback" not in text, f"{name}: a cell printed a traceback"
    # every file the notebook wrote is under CLINFUSE_NB_OUT or its working folder
    assert (tmp / "out").exists(), f"{name}: nothing written under CLINFUSE_NB_OUT"


@pytest.mark.parametrize("name", ALL)
def test_notebook_runs_tiny(name: str, tmp_path: Path) -> None:
    nb = run_notebook(name, tmp_path, TINY, timeout=300)
    _check_executed(name, nb, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_notebook_runs_full_size(name: str, tmp_path: Path) -> None:
    nb = run_notebook(name, tmp_path, {}, timeout=3600)
    _check_executed(name, nb, tmp_path)


def test_expected_notebooks_exist() -> None:
    wanted = {
        "01_quickstart.ipynb",
        "02_fusion_strategies.ipynb",
        "03_explanations.ipynb",
        "04_privacy.ipynb",
        "05_bring_your_own_cohort.ipynb",
        "06_external_validation.ipynb",
        "07_temporal_and_conformal.ipynb",
        "08_tuning_and_updating.ipynb",
    }
    assert wanted <= set(ALL), f"missing notebooks: {sorted(wanted - set(ALL))}"


URL = re.compile(r"https?://", re.IGNORECASE)


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_stored_clean(name: str) -> None:
    """Stored without outputs (or tiny ones), no data from the network, sizes from the environment."""
    raw = (NOTEBOOKS / name).read_text(encoding="utf-8")
    nb = nbformat.reads(raw, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        stored = json.dumps(cell.get("outputs", []))
        assert len(stored) < 2_000, f"{name}: a cell stores {len(stored)} bytes of output"
        assert URL.search(cell.source) is None, f"{name}: a code cell references a URL"
    assert len(raw) < 100_000, f"{name}: {len(raw)} bytes; store it without outputs"
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    assert "CLINFUSE_NB_" in first_code, f"{name}: the first code cell must read the sizes"
    assert "CLINFUSE_NB_OUT" in first_code, f"{name}: outputs must go under CLINFUSE_NB_OUT"
