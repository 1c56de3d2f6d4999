"""Case-level parallelism of the cohort de-identification (``deidentify_cohort(workers=)``,
``clinfuse deid --workers``): the output of worker processes is byte for byte the serial
one, failures end the run as in the serial loop, and no process or partial output is left.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.synchronize
import os
import pickle
import re
import shutil
import signal
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd
import pydicom
import pytest

import privacy.cohort as cohort_mod
from privacy.cohort import REPORT_NAME, CohortSpec, deidentify_cohort
from privacy.errors import DeidError, ResidualRiskError
from privacy.pseudonym import Pseudonymizer
from privacy.text import Span

SECRET = b"test-secret-0123456789abcdef-0123456789"
SPEC = CohortSpec(age_columns=("age",))


def _run(cohort: Path, out: Path, manifest: pd.DataFrame | None = None, **kw):
    frame = manifest if manifest is not None else pd.read_csv(cohort / "manifest.csv", dtype=str)
    return deidentify_cohort(frame, cohort, out, Pseudonymizer(SECRET), SPEC, **kw)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def parallel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the runs that really went to worker processes (not the serial fallback)."""
    calls: list[int] = []
    real = cohort_mod._deidentify_in_workers

    def spy(frame, plan, progress):
        calls.append(plan.workers)
        return real(frame, plan, progress)

    monkeypatch.setattr(cohort_mod, "_deidentify_in_workers", spy)
    return calls


@pytest.fixture(autouse=True)
def no_process_left():
    """Every test ends with no worker process alive and none left unreaped (the helpers
    multiprocessing keeps for the whole session, fork server and resource tracker, aside;
    processes an earlier test in this worker left, e.g. a notebook's kernel, too)."""
    psutil = pytest.importorskip("psutil")
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    yield
    assert multiprocessing.active_children() == []
    left = [
        (c.pid, c.status(), c.cmdline())
        for c in psutil.Process().children(recursive=True)
        if c.pid not in before and "from multiprocessing." not in " ".join(c.cmdline())
    ]
    assert left == []


def _no_partial_output(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def messy_cohort(synth_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic cohort with bad files in several rows (so the order of the problems is
    compared), a DICOM series folder, a zipped series and a corrupt zip."""
    cohort = tmp_path_factory.mktemp("messy") / "cohort"
    shutil.copytree(synth_cohort, cohort)
    m = pd.read_csv(cohort / "manifest.csv", dtype=str)
    rows = list(m.index)
    (cohort / m.loc[rows[1], "image"]).write_bytes(b"not a dicom file at all")
    (cohort / m.loc[rows[2], "note"]).write_bytes("Seen by Zoë Müller".encode("utf-16"))
    # a series folder of three slices
    src = pydicom.dcmread(cohort / m.loc[rows[4], "image"])
    series = cohort / "images" / "series4"
    series.mkdir()
    uid = src.SOPInstanceUID
    for k in range(3):
        src.InstanceNumber = k + 1
        src.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[uid, str(k)])
        src.save_as(series / f"IM{k:04d}", enforce_file_format=True)
    m.loc[rows[4], "image"] = "images/series4"
    # a zipped export and a corrupt one
    with zipfile.ZipFile(cohort / "images" / "export.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(cohort / m.loc[rows[6], "image"], "EXPORT/SER1/IM0001")
        zf.writestr("EXPORT/README.TXT", "PACS export")
    m.loc[rows[6], "image"] = "images/export.zip"
    (cohort / "images" / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    m.loc[rows[9], "image"] = "images/broken.zip"
    m.loc[rows[11], "note"] = "notes/missing.txt"
    m.loc[rows[13], "signal"] = "signals/missing.hea"
    m.to_csv(cohort / "manifest.csv", index=False)
    return cohort


def test_workers_output_is_byte_identical(
    messy_cohort: Path, tmp_path: Path, parallel_calls: list[int]
) -> None:
    serial = _run(messy_cohort, tmp_path / "serial", workers=1)
    assert parallel_calls == []
    seen: list[tuple[int, int]] = []
    parallel = _run(
        messy_cohort, tmp_path / "parallel", workers=2, progress=lambda d, n: seen.append((d, n))
    )
    assert parallel_calls == [2]  # the pool ran, not the serial fallback
    a, b = _hashes(serial.out_dir), _hashes(parallel.out_dir)
    assert REPORT_NAME in a and "manifest.csv" in a and any("/0003.dcm" in f for f in a)
    assert a == b  # every file, the manifest and deid_report.json included
    assert serial.problems == parallel.problems  # original paths, in row order
    assert [p["column"] for p in serial.problems] == ["image", "note", "image", "note", "signal"]
    assert serial.report == parallel.report
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (16, 16)
    _no_partial_output(tmp_path)


def test_spawned_workers_match_serial(synth_cohort: Path, tmp_path: Path, parallel_calls) -> None:
    """The options travel pickled to spawned workers (the path of macOS and of processes
    that run threads); presidio is left out to keep worker start-up short."""
    frame = pd.read_csv(synth_cohort / "manifest.csv", dtype=str).head(5)
    serial = _run(synth_cohort, tmp_path / "s", frame, use_presidio=False)
    spawned = _run(
        synth_cohort, tmp_path / "p", frame, use_presidio=False, workers=2, start_method="spawn"
    )
    assert parallel_calls == [2]
    assert _hashes(serial.out_dir) == _hashes(spawned.out_dir)


class FailingDetector:
    """A note detector (think local NER model) that crashes on notes marked ``BOOM-<row>``;
    on row 3 only after a while, so that a later row fails first in the other worker."""

    def __call__(self, text: str) -> list[Span]:
        found = re.search(r"BOOM-(\d+)", text)
        if found:
            if found.group(1) == "3":
                time.sleep(1.5)
            raise RuntimeError(f"detector crashed on {found.group(0)}")
        return []


def test_worker_exception_is_the_serial_one(
    synth_cohort: Path, tmp_path: Path, parallel_calls
) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(synth_cohort, cohort)
    m = pd.read_csv(cohort / "manifest.csv", dtype=str)
    for row in (3, 6):
        note = cohort / m.loc[row, "note"]
        note.write_text(note.read_text() + f"\nBOOM-{row}\n")
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        with pytest.raises(RuntimeError, match=r"crashed on BOOM-3$"):  # the first failing row
            _run(cohort, out, workers=workers, detectors=[FailingDetector()])
        assert not out.exists()
    assert parallel_calls == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no partial output


def test_interrupt_stops_the_workers_and_removes_partial_output(
    synth_cohort: Path, tmp_path: Path, parallel_calls
) -> None:
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the workers run

    with pytest.raises(KeyboardInterrupt):
        _run(synth_cohort, tmp_path / "out", workers=2, progress=interrupt)
    assert parallel_calls == [2]
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder; no process left


class KillingDetector:
    """A detector whose process dies on a marked note (as the system's OOM killer does)."""

    def __call__(self, text: str) -> list[Span]:
        if "KILL-ME" in text:
            os.kill(os.getpid(), signal.SIGKILL)
        return []


def test_killed_worker_ends_the_run(synth_cohort: Path, tmp_path: Path, parallel_calls) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from privacy.cohort import DeidError

    cohort = tmp_path / "cohort"
    shutil.copytree(synth_cohort, cohort)
    m = pd.read_csv(cohort / "manifest.csv", dtype=str)
    note = cohort / m.loc[5, "note"]
    note.write_text(note.read_text() + "\nKILL-ME\n")
    with pytest.raises(
        DeidError, match=r"ended abruptly on a case in manifest data rows \d+-\d+ .*--workers 1"
    ) as err:
        _run(cohort, tmp_path / "out", workers=2, detectors=[KillingDetector()])
    assert isinstance(err.value.__cause__, BrokenProcessPool)
    first, last = map(int, re.search(r"data rows (\d+)-(\d+)", str(err.value)).groups())
    assert first <= 6 <= last  # the marked note is on the sixth data row
    assert parallel_calls == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no partial output


class SlowDetector:
    """A detector that takes its time on one marked text (a series description)."""

    def __call__(self, text: str) -> list[Span]:
        if "SLOWZIP" in text:
            time.sleep(30)
        return []


def test_stopped_worker_removes_its_unzipped_series(
    synth_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel_calls
) -> None:
    """Ctrl-C while a worker holds a zipped series unpacked (original files, identifiers and
    all) in a temporary folder: the worker is stopped at once and that folder removed."""
    from privacy.dicom import DicomOptions

    cohort = tmp_path / "cohort"
    shutil.copytree(synth_cohort, cohort)
    m = pd.read_csv(cohort / "manifest.csv", dtype=str)
    ds = pydicom.dcmread(cohort / m.loc[1, "image"])
    ds.SeriesDescription = "AXIAL SLOWZIP"
    ds.save_as(tmp_path / "IM0001", enforce_file_format=True)
    with zipfile.ZipFile(cohort / "images" / "slow.zip", "w") as zf:
        zf.write(tmp_path / "IM0001", "SER1/IM0001")
    m.loc[1, "image"] = "images/slow.zip"
    m.to_csv(cohort / "manifest.csv", index=False)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the forked workers' temp folder

    def unzipped() -> list[Path]:
        return [p for p in temp.iterdir() if p.name.startswith("clinfuse-deid-unzip-")]

    def interrupt(done: int, total: int) -> None:
        deadline = time.monotonic() + 20
        while not unzipped() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the other worker has unpacked the zip
        assert len(unzipped()) == 1
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _run(
            cohort,
            tmp_path / "out",
            workers=2,
            # forked workers inherit the patched temp folder; a fork server started earlier in
            # this process (another thread alive, e.g. tqdm's monitor, selects it) would not
            start_method="fork",
            progress=interrupt,
            detectors=[SlowDetector()],
            dicom_options=DicomOptions(retain_longitudinal=True, clean_descriptors=True),
        )
    assert time.monotonic() - start < 20  # the worker did not sleep its 30 s out
    assert parallel_calls == [2]
    assert unzipped() == []
    assert not (tmp_path / "out").exists()
    _no_partial_output(tmp_path)


def _hold_an_unzipped_series(temp: str, ready: multiprocessing.synchronize.Event) -> None:
    """A worker's chunk, stopped while it holds a temporary folder; the pool's second stop
    (it terminates the other workers when the first one ends) arrives during the clean-up."""
    signal.signal(signal.SIGTERM, cohort_mod._on_sigterm)
    cohort_mod._IN_CHUNK = True
    rmtree = shutil.rmtree

    def stopped_again(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        rmtree(*args, **kwargs)  # type: ignore[arg-type]

    shutil.rmtree = stopped_again  # type: ignore[assignment]  # tempfile's clean-up uses it
    try:
        with tempfile.TemporaryDirectory(prefix="clinfuse-deid-unzip-", dir=temp) as held:
            (Path(held) / "IM0001").write_bytes(b"DICM")
            ready.set()
            time.sleep(30)
    except cohort_mod._Stop:
        os._exit(3)
    os._exit(0)


def test_a_second_stop_does_not_cut_the_clean_up_short(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=_hold_an_unzipped_series, args=(str(tmp_path), ready))
    worker.start()
    assert ready.wait(20)
    worker.terminate()
    worker.join(20)
    assert worker.exitcode == 3  # stopped through the clean-up, not killed
    assert list(tmp_path.iterdir()) == []


def test_residual_risk_failure_publishes_the_same_report(
    synth_cohort: Path, tmp_path: Path, parallel_calls
) -> None:
    cohort = tmp_path / "leaky"
    shutil.copytree(synth_cohort, cohort)
    m = pd.read_csv(cohort / "manifest.csv", dtype=str)
    mrn = pydicom.dcmread(cohort / m.loc[0, "image"], stop_before_pixels=True).PatientID
    m["hospital_number"] = ""
    m.loc[0, "hospital_number"] = mrn  # an undeclared column holding the MRN
    m.to_csv(cohort / "manifest.csv", index=False)
    published = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        with pytest.raises(ResidualRiskError, match="nothing was published"):
            _run(cohort, out, workers=workers)
        published[workers] = _hashes(out)
        assert list(published[workers]) == [REPORT_NAME]
    assert published[1] == published[2]
    assert parallel_calls == [2]
    report = json.loads((tmp_path / "out2" / REPORT_NAME).read_text())
    assert report["residual_risk"]["hits"][0]["source"] == "PatientID"
    _no_partial_output(tmp_path)


def test_serial_fallbacks_and_bad_arguments(
    synth_cohort: Path, tmp_path: Path, parallel_calls
) -> None:
    frame = pd.read_csv(synth_cohort / "manifest.csv", dtype=str)
    small = frame.head(3)  # fewer than 2 cases per worker: not worth starting processes
    a = _run(synth_cohort, tmp_path / "a", small, workers=2)
    dup = frame.head(6).copy()
    dup.loc[5, "case_id"] = dup.loc[4, "case_id"]  # one case twice: its files collide
    b = _run(synth_cohort, tmp_path / "b", dup, workers=2)
    c = _run(synth_cohort, tmp_path / "c", dup, workers=1)
    assert parallel_calls == []
    assert a.report["n_cases"] == 3 and _hashes(b.out_dir) == _hashes(c.out_dir)
    with pytest.warns(RuntimeWarning, match="cannot be sent to 'spawn' worker processes"):
        d = _run(
            synth_cohort,
            tmp_path / "d",
            frame.head(6),
            workers=2,
            start_method="spawn",
            detectors=[lambda text: []],  # a closure cannot be pickled: runs serially
        )
    assert parallel_calls == [] and d.report["n_cases"] == 6
    with pytest.raises(DeidError, match="workers must be"):
        _run(synth_cohort, tmp_path / "w", small, workers=-1)
    with pytest.raises(DeidError, match="start method 'threads'"):
        _run(synth_cohort, tmp_path / "e", frame, workers=2, start_method="threads")
    assert not (tmp_path / "w").exists() and not (tmp_path / "e").exists()
    _no_partial_output(tmp_path)


def test_ocr_engine_pickles_for_spawned_workers() -> None:
    """An OCR pixel cleaner holds the pytesseract module: sent by reference to the workers."""
    if shutil.which("tesseract") is None:
        pytest.skip("the Tesseract OCR engine is not installed")
    import io

    from privacy.pixels import PixelCleaner

    cleaner = PixelCleaner("all-text")
    with pytest.raises(TypeError):
        pickle.dumps(cleaner)
    buf = io.BytesIO()
    cohort_mod._RunPickler(buf).dump(cleaner)
    again = pickle.loads(buf.getvalue())
    assert again.ocr.cmd == cleaner.ocr.cmd and again.ocr._tesseract is cleaner.ocr._tesseract


def test_cli_workers_option(synth_cohort: Path, tmp_path: Path, parallel_calls) -> None:
    import typer
    from typer.testing import CliRunner

    from clinfuse.deid_cli import DEID_EPILOG, _parse_workers, deid
    from clinfuse.errors import ConfigError

    app = typer.Typer()
    app.command(name="deid", epilog=DEID_EPILOG)(deid)
    app.command(name="noop")(lambda: None)
    key = tmp_path / "site.key"
    key.write_text(SECRET.decode() + "\n")
    runner = CliRunner()
    outputs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        args = ["deid", str(synth_cohort), "--out", str(out), "--secret-file", str(key)]
        res = runner.invoke(app, [*args, "--workers", workers])
        assert res.exit_code == 0, res.output
        outputs[workers] = res.output.replace(f"out{workers}", "outN")
    assert parallel_calls == [2]
    assert "residual-risk check" in outputs["2"] and outputs["1"] == outputs["2"]
    assert _hashes(tmp_path / "out1") == _hashes(tmp_path / "out2")
    bad = runner.invoke(
        app, ["deid", str(synth_cohort), "--out", str(tmp_path / "x"), "--workers", "many"]
    )
    assert isinstance(bad.exception, ConfigError) and "--workers" in str(bad.exception)
    assert _parse_workers("auto") == 0 and _parse_workers(" 3 ") == 3
    with pytest.raises(ConfigError, match="negative"):
        _parse_workers("-2")
    assert "--workers" in runner.invoke(app, ["deid", "--help"]).output
