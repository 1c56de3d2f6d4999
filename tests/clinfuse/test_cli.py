"""The command line end to end: synth → validate, bad input as one-line errors, help with examples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom.examples
import pytest

from clinfuse.cli import main
from clinfuse.cohort import Cohort
from clinfuse.config import RunConfig
from clinfuse.data import CaseLoader
from clinfuse.errors import ClinFuseError, CohortError, DataFileNotFoundError, ModalityLoadError
from clinfuse.synth import synthesize_cohort


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    return synthesize_cohort(
        root / "cohort", n_cases=24, seed=5, image_size=32, signal_fs=50, signal_seconds=4.0
    )


def test_synth_then_validate_reports_no_errors(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "c"), "--n-cases", "20", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 20 cases" in out
    report = tmp_path / "report.json"
    assert main(["validate", str(tmp_path / "c" / "manifest.csv"), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["ok"] and data["n_errors"] == 0 and data["n_rows"] == 20
    # every file synth names was opened successfully by clinfuse's loaders
    assert data["loadable"] == data["declared"]


@pytest.mark.parametrize(
    "command",
    ["synth", "validate", "train", "crossval", "backtest", "predict", "demo", "evaluate"],
)
def test_every_command_has_help_with_examples(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Example" in text and f"clinfuse {command}" in text
    from clinfuse.cli import app

    info = next(i for i in app.registered_commands if (i.name or i.callback.__name__) == command)
    examples = [c for c in info.epilog.split("\n\n") if c.startswith("clinfuse")]
    starts = [line.strip() for line in text.splitlines() if line.strip().startswith("clinfuse ")]
    assert len(starts) == len(examples) >= 1  # one example per line, not one wrapped blob


def _bad_cohort(root: Path, small: Path) -> Path:
    """A copy of a small cohort with one bad case of each kind."""
    shutil.copytree(small.parent, root, dirs_exist_ok=True)
    frame = pd.read_csv(root / "manifest.csv", dtype=str)
    ids = frame["case_id"].tolist()

    ct = Path(pydicom.examples.get_path("ct")).read_bytes()
    (root / "images" / "truncated.dcm").write_bytes(ct[: len(ct) // 2])
    (root / "notes" / "latin1.txt").write_bytes("Patientin klagt \xfcber Fieber".encode("latin-1"))
    np.save(root / "signals" / "cube.npy", np.zeros((2, 3, 4)))
    np.save(root / "signals" / "nan.npy", np.full((500, 2), np.nan))
    (root.parent / "elsewhere.txt").write_text("outside")

    edits = {
        ids[0]: ("image", "images/truncated.dcm"),
        ids[1]: ("note", "../elsewhere.txt"),
        ids[2]: ("note", "notes/latin1.txt"),
        ids[3]: ("signal", "signals/cube.npy"),
        ids[4]: ("signal", "signals/nan.npy"),
        ids[5]: ("image", "images/does_not_exist.dcm"),
    }
    frame["signal_fs"] = ""
    for cid, (col, value) in edits.items():
        frame.loc[frame.case_id == cid, col] = value
        if col == "signal":
            frame.loc[frame.case_id == cid, "signal_fs"] = "100"
    frame.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


EXPECTED = [  # (row, field, error type through the loaders, words in the message)
    (0, "image", ModalityLoadError, "truncated.dcm"),
    (1, "note", ModalityLoadError, "outside the cohort folder"),
    (2, "note", ModalityLoadError, "UTF-8"),
    (3, "signal", ModalityLoadError, "cube.npy"),
    (4, "signal", ModalityLoadError, "nan.npy"),
    (5, "image", DataFileNotFoundError, "does_not_exist.dcm"),
]


def test_bad_inputs_are_listed_per_case_by_validate(tmp_path, small_cohort, capsys):
    manifest = _bad_cohort(tmp_path / "bad", small_cohort)
    report = tmp_path / "report.json"
    assert main(["validate", str(manifest), "--json", str(report)]) == 1
    issues = json.loads(report.read_text())["issues"]
    ids = pd.read_csv(manifest, dtype=str)["case_id"].tolist()
    errors = {(i["case_id"], i["field"]) for i in issues if i["severity"] == "error"}
    for row, field, _, _ in EXPECTED:
        assert (ids[row], field) in errors
    assert len(errors) == len(EXPECTED)
    out = capsys.readouterr().out
    assert "6 errors in 6 cases" in out


def test_bad_inputs_raise_named_errors_and_are_excluded_in_batch(tmp_path, small_cohort):
    manifest = _bad_cohort(tmp_path / "bad", small_cohort)
    cohort = Cohort.from_manifest(manifest)
    ids = pd.read_csv(manifest, dtype=str)["case_id"].tolist()
    # the path outside the folder is caught when the manifest is read: the case is excluded there
    assert [i.case_id for i in cohort.excluded] == [ids[1]]
    loader = CaseLoader(RunConfig().data, ["image", "note", "signal"])
    for row, field, error, words in EXPECTED:
        if row == 1:
            continue
        case = next(r for r in cohort.rows if r.case_id == ids[row])
        with pytest.raises(error) as exc:
            loader.load(case)
        message = str(exc.value)
        assert ids[row] in message and words in message, message
        assert exc.value.field in (field, "note_text")
    # in batch loading, bad cases are excluded with their reason, never raised
    loaded = loader.load_many(cohort.rows)
    assert {i.case_id for i in loaded.excluded} == {ids[r] for r, *_ in EXPECTED if r != 1}
    assert len(loaded) == len(cohort) - 5


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "cannot read manifest"),
        ("case_id,label\n", "no rows"),
        ("patient,label\np1,1\n", "'case_id' is missing"),
    ],
    ids=["empty-file", "header-only", "no-case_id"],
)
def test_manifest_errors_are_one_line_exit_1(tmp_path, capsys, content, needle):
    path = tmp_path / "m.csv"
    path.write_text(content)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert needle in err and "m.csv" in err
    assert "Traceback" not in err
    with pytest.raises(CohortError):
        Cohort.from_manifest(path)


def test_usage_error_is_exit_1(capsys):
    assert main(["validate"]) == 1
    assert main(["no-such-command"]) == 1


def test_internal_error_is_exit_2(monkeypatch, tmp_path, capsys):
    import clinfuse.cohort.validate as v

    def boom(*args, **kwargs):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(v, "validate_cohort", boom)
    assert main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "internal error" in err and "--debug" in err


def test_train_and_predict_commands(tmp_path, small_cohort, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data:\n  tabular_columns: [age, crp, wbc]\n  image: {spatial_size: [32, 32]}\n"
        "  signal: {target_fs: 50.0, duration_s: 4.0}\n  split_fractions: [0.5, 0.25, 0.25]\n"
        "encoders:\n  image: {name: small_cnn, embed_dim: 8, width: 4}\n"
        "  signal: {name: resnet1d, embed_dim: 8, width: 4, depth: 2}\n"
        "training: {epochs: 1, batch_size: 8}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(small_cohort), "--out", str(run), "--config", str(config)]) == 0
    assert "AUROC" in capsys.readouterr().out
    assert main(["train", str(small_cohort), "--out", str(run), "--config", str(config)]) == 1
    assert "already holds a finished run" in capsys.readouterr().err
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(small_cohort), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 24 and frame["p_fusion"].between(0, 1).all()
    saved = pd.read_csv(run / "predictions.csv")
    np.testing.assert_allclose(frame["p_fusion"], saved["p_fusion"], rtol=0, atol=1e-12)
    # a config with a typo is a one-line error naming the field
    config.write_text("training: {epoch: 3}\n")
    assert (
        main(["train", str(small_cohort), "--out", str(tmp_path / "r2"), "--config", str(config)])
        == 1
    )
    assert "training.epoch" in capsys.readouterr().err


def test_errors_are_clinfuse_errors_and_builtins():
    assert issubclass(CohortError, ValueError) and issubclass(CohortError, ClinFuseError)
    assert issubclass(DataFileNotFoundError, FileNotFoundError)
    err = ModalityLoadError(
        "cannot read", case_id="c1", field="image", path="a.dcm", hint="re-export it"
    )
    assert str(err) == "case 'c1', field 'image', file a.dcm: cannot read (re-export it)"


def test_cli_reference_is_up_to_date(tmp_path):
    """docs/cli.md is generated from the Typer app (`make docs-cli`); it must match the code."""
    import subprocess
    import sys

    out = tmp_path / "cli.md"
    typer_bin = Path(sys.executable).with_name("typer")
    subprocess.run(
        [
            str(typer_bin),
            "clinfuse.cli",
            "utils",
            "docs",
            "--name",
            "clinfuse",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    committed = Path(__file__).parents[2] / "docs" / "cli.md"
    assert out.read_text() == committed.read_text(), "run `make docs-cli` and commit docs/cli.md"


def test_the_cli_starts_without_loading_the_heavy_libraries() -> None:
    """`clinfuse --help` and every command's start import only what registers the commands:
    torch, MONAI, Flower, transformers and scipy load inside the command that needs them."""
    import subprocess
    import sys

    heavy = ("torch", "monai", "flwr", "transformers", "scipy", "sklearn", "shap", "streamlit")
    code = f"import sys, clinfuse.cli\nprint(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_predict_and_evaluate_refuse_cuda_without_a_gpu(tiny_run, tiny_cohort, tmp_path) -> None:
    from typer.testing import CliRunner

    from clinfuse.cli import app

    for args in (
        ["predict", str(tiny_run), str(tiny_cohort), "--out", str(tmp_path / "p.csv")],
        ["evaluate", str(tiny_run), str(tiny_cohort), "--out", str(tmp_path / "ev")],
    ):
        res = CliRunner().invoke(app, [*args, "--device", "cuda"])
        assert res.exit_code != 0 and "no CUDA GPU is visible" in res.output + str(res.exception)
        assert not (tmp_path / "p.csv").exists() and not (tmp_path / "ev").exists()
