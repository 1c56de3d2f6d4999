"""The fast paths give the same results as the plain ones (CPU coverage of the GPU settings).

Tokenize-once vs tokenize-per-batch, channels-last vs default layout, DataLoader workers vs
in-loop collation, parallel vs serial loading, persisted vs fresh decoding, memory-mapped
packs vs the per-case cache, streamed head training vs a known separable problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clinfuse.cache import EmbeddingCache, PackedEmbeddings
from clinfuse.cohort.manifest import Cohort
from clinfuse.config import RunConfig, TrainingConfig
from clinfuse.data import CaseLoader
from clinfuse.encoders import build_encoder
from clinfuse.model import Collator
from clinfuse.training.trainer import (
    SpeedSettings,
    batch_loader,
    resolve_speed,
    speed_up_encoders,
)
from tests.conftest import tiny_config

NOTES = [
    "Chest pain since 2 h, troponin pending.",
    " ".join(f"day {i}: stable, afebrile, plan unchanged." for i in range(60)),
    "Afebrile.",
]


def _loader_config() -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {
                "image": {"spatial_size": [32, 32], "window": "ct_soft_tissue"},
                "signal": {"target_fs": 50.0, "duration_s": 4.0},
            }
        }
    )


def test_notes_tokenized_once_collate_exactly_like_tokenizing_in_the_batch() -> None:
    from transformers import AutoTokenizer

    from clinfuse.encoders.text import default_text_model_path

    enc = build_encoder("note", {"name": "transformer", "max_length": 64, "stride": 8})
    fresh = enc.collate(NOTES)
    pre = enc.collate(enc.tokenize(NOTES))  # type: ignore[operator]
    mixed = enc.collate([enc.tokenize(NOTES[:1])[0], *NOTES[1:]])  # type: ignore[operator]
    # reference: Hugging Face's own batch tokenization with overflow windows, padded to the longest
    tok = AutoTokenizer.from_pretrained(default_text_model_path(), local_files_only=True)
    ref = tok(
        NOTES,
        max_length=64,
        stride=8,
        truncation=True,
        return_overflowing_tokens=True,
        padding="longest",
        return_tensors="pt",
    )
    for batch in (fresh, pre, mixed):
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            torch.testing.assert_close(batch[key], ref[key].to(torch.int64), rtol=0, atol=0)
        assert batch["chunk_to_case"].tolist() == ref["overflow_to_sample_mapping"].tolist()
        assert batch["chunk_lengths"] == ref["attention_mask"].sum(1).tolist()
    assert fresh["n_chunks"].tolist()[1] >= 3


def test_channels_last_embeds_like_the_default_layout() -> None:
    torch.manual_seed(0)
    enc = build_encoder("image", {"name": "small_cnn", "embed_dim": 8, "width": 4}).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        before = enc(x)
        keys = list(enc.state_dict())
        restore = speed_up_encoders(_Net(enc), [], SpeedSettings(channels_last=True))
        assert enc.channels_last  # type: ignore[attr-defined]
        conv = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        during = enc(x)
        restore()
        after = enc(x)
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert list(enc.state_dict()) == keys
    assert not enc.channels_last  # type: ignore[attr-defined]
    assert conv.weight.is_contiguous()


class _Net(torch.nn.Module):
    def __init__(self, image: torch.nn.Module) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleDict({"image": image})


def test_speed_settings_are_off_on_cpu_and_on_for_cuda() -> None:
    cfg = TrainingConfig()
    assert resolve_speed(cfg, "cpu") == SpeedSettings()
    gpu = resolve_speed(cfg, "cuda")
    assert gpu.channels_last and gpu.fused_optimizer and not gpu.compile
    assert gpu.pin_memory == torch.cuda.is_available()
    explicit = resolve_speed(TrainingConfig(num_workers=3, channels_last=False), "cuda")
    assert explicit.num_workers == 3 and not explicit.channels_last
    with pytest.raises(ValueError, match="worker counts"):
        TrainingConfig(num_workers=-1)


def test_worker_batches_equal_in_loop_batches(tiny_cohort: Path) -> None:
    cfg = _loader_config()
    rows = Cohort.from_manifest(tiny_cohort).rows[:24]
    cases = CaseLoader(cfg.data, ["image", "signal"]).load_many(rows).cases
    enc = {
        "image": build_encoder("image", {"name": "small_cnn"}),
        "signal": build_encoder("signal", {"name": "resnet1d", "in_leads": 2}),
    }
    collate = Collator(["image", "signal"], enc, [])
    index_lists = [[5, 1, 7], [0, 2], [9, 3, 4, 8]]
    plain, _ = batch_loader(cases, collate, SpeedSettings())
    pooled, close = batch_loader(cases, collate, SpeedSettings(num_workers=2))
    try:
        for epoch in range(2):  # the workers persist across epochs
            order = index_lists if epoch == 0 else index_lists[::-1]
            for a, b in zip(plain(order), pooled(order), strict=True):
                assert a["case_id"] == b["case_id"]
                torch.testing.assert_close(a["present"], b["present"])
                for m in ("image", "signal"):
                    torch.testing.assert_close(a["inputs"][m][0], b["inputs"][m][0])
                    torch.testing.assert_close(a["inputs"][m][1], b["inputs"][m][1])
    finally:
        close()


def test_parallel_and_persisted_loading_equal_a_fresh_serial_load(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    cfg = _loader_config()
    rows = Cohort.from_manifest(tiny_cohort).rows[:16]
    serial = CaseLoader(cfg.data, ["image", "signal"]).load_many(rows)
    persisted = CaseLoader(cfg.data, ["image", "signal"], persist_dir=tmp_path)
    first = persisted.load_many(rows, workers=2)
    stored = list((tmp_path / "decoded-image").rglob("*.npy"))
    assert len(stored) == sum(c["image"] is not None for c in serial.cases) > 0
    second = persisted.load_many(rows)  # from the store
    for loaded in (first, second):
        assert loaded.case_ids == serial.case_ids
        for a, b in zip(serial.cases, loaded.cases, strict=True):
            if a["image"] is not None:
                np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
                assert list(b["image_meta"]["window_applied"]) == list(
                    a["image_meta"]["window_applied"]
                )
            if a["signal"] is not None:
                np.testing.assert_array_equal(a["signal"], b["signal"])
    # other image settings never read the stored pixels
    other = _loader_config().data.model_copy(
        update={"image": cfg.data.image.model_copy(update={"spatial_size": (16, 16)})}
    )
    resized = CaseLoader(other, ["image"], persist_dir=tmp_path).load_many(rows[:2]).cases
    assert all(c["image"].shape[-2:] == (16, 16) for c in resized if c["image"] is not None)


def test_shared_decoding_reads_each_file_once_and_gives_the_same_cases(tiny_cohort: Path) -> None:
    """Inside `shared_decoding` (cross-validation folds) a second loader takes the images
    and signals from memory: identical arrays, independent copies, no second decode."""
    from clinfuse.data import shared_decoding

    cfg = _loader_config()
    rows = Cohort.from_manifest(tiny_cohort).rows[:16]
    fresh = CaseLoader(cfg.data, ["image", "signal"]).load_many(rows)
    with shared_decoding():
        first = CaseLoader(cfg.data, ["image", "signal"]).load_many(rows)
        second_loader = CaseLoader(cfg.data, ["image", "signal"])
        calls = {"image": 0, "signal": 0}
        for m in calls:
            inner = getattr(second_loader, f"_{m}_tf")

            def counted(d, inner=inner, m=m):
                calls[m] += 1
                return inner(d)

            setattr(second_loader, f"_{m}_tf", counted)
        first.cases[0]["image"] *= 0  # a run changing its copy changes nobody else's
        second = second_loader.load_many(rows)
    assert calls == {"image": 0, "signal": 0}
    for a, b in zip(fresh.cases, second.cases, strict=True):
        for m in ("image", "signal"):
            if a[m] is None:
                assert b[m] is None
                continue
            assert type(a[m]) is type(b[m]) and a[m].dtype == b[m].dtype
            np.testing.assert_array_equal(np.asarray(a[m]), np.asarray(b[m]))
            meta_a, meta_b = a[f"{m}_meta"] or {}, b[f"{m}_meta"] or {}
            assert meta_a.keys() == meta_b.keys()
            for key in meta_a:
                assert np.array_equal(np.asarray(meta_a[key]), np.asarray(meta_b[key])), key
    # outside the block nothing is shared
    third = CaseLoader(cfg.data, ["image", "signal"])
    third._image_tf = lambda d: (_ for _ in ()).throw(AssertionError("decoded"))  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="decoded"):
        third.load_many(rows[:1])


def test_pack_streams_the_cache_into_a_memory_mapped_matrix(tmp_path: Path) -> None:
    store = EmbeddingCache(tmp_path / "cache", "note", "f" * 64)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 5)).astype(np.float32)
    keys: list[str | None] = []
    for i in range(7):
        key = store.key(f"c{i}", f"text:{i}")
        if i != 3:
            store.put(key, values[i])
        keys.append(None if i == 5 else key)
    packed, found = store.pack(keys, tmp_path / "note.npy", chunk_rows=2)
    assert found.tolist() == [True, True, True, False, True, False, True]
    assert isinstance(packed.matrix, np.memmap) and packed.matrix.shape == (7, 5)
    expected = np.where(found[:, None], values, 0.0)
    np.testing.assert_array_equal(packed[:], expected)
    np.testing.assert_array_equal(PackedEmbeddings(tmp_path / "note.npy")[[6, 0]], values[[6, 0]])


def test_heads_trained_on_streamed_packs_separate_a_separable_cohort(tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from clinfuse.fusion.base import FusionConfig, build_fusion
    from clinfuse.model import FusionNetwork
    from clinfuse.training.embed import fit_heads_on_packed, packed_batches

    rng = np.random.default_rng(1)
    n, dims = 600, {"note": 6, "image": 4}
    y = (rng.random(n) < 0.4).astype(np.float32)
    packs = {}
    for m, d in dims.items():
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 0] += 3.0 * (y - 0.5)
        packs[m] = PackedEmbeddings.write(tmp_path / f"{m}.npy", n, d, [x[:250], x[250:]])
    present = np.ones((n, 2), bool)
    present[::3, 1] = False
    torch.manual_seed(0)
    net = FusionNetwork(list(dims), {}, build_fusion(FusionConfig(), list(dims), dims))
    losses = fit_heads_on_packed(net, packs, present, y, epochs=4, batch_size=128, lr=1e-2)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        z = torch.cat(
            [
                net.fusion(b["embeddings"], b["present"]).unimodal
                for b in packed_batches(packs, present, None, list(dims), 256)
            ]
        ).numpy()
    assert roc_auc_score(y, z[:, 0]) > 0.9
    assert roc_auc_score(y[present[:, 1]], z[present[:, 1], 1]) > 0.9


def test_fingerprint_memo_follows_every_weight_change() -> None:
    torch.manual_seed(0)
    enc = build_encoder("signal", {"name": "resnet1d", "in_leads": 2, "depth": 2})
    torch.manual_seed(1)
    other = build_encoder("signal", {"name": "resnet1d", "in_leads": 2, "depth": 2})
    first = enc.fingerprint()
    assert enc.fingerprint() == first  # memo
    enc.load_state_dict(other.state_dict())  # in-place copies
    assert enc.fingerprint() == other.fingerprint() != first
    conv = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv1d))
    conv.weight = torch.nn.Parameter(conv.weight.detach() * 2)  # a new tensor
    assert enc.fingerprint() not in (first, other.fingerprint())


@pytest.mark.slow
def test_compile_really_compiles_and_undoes_cleanly() -> None:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    enc = build_encoder("signal", {"name": "resnet1d", "in_leads": 2, "depth": 2}).eval()
    x = torch.randn(2, 2, 64)
    with torch.no_grad():
        eager = enc(x)
        counters.clear()
        restore = speed_up_encoders(_Net2(enc), [], SpeedSettings(compile=True))
        compiled = enc(x)
        # dynamo captured a graph and inductor compiled it (counters stay empty when not)
        assert any(counters[k] for k in ("inductor", "aot_autograd"))
        restore()
        again = enc(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    assert "forward" not in enc.net.__dict__


class _Net2(torch.nn.Module):
    def __init__(self, signal: torch.nn.Module) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleDict({"signal": signal})


def test_training_with_workers_and_persisted_images_gives_the_same_model(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    """Loader processes, DataLoader workers and the decoded-image store change speed, not results."""
    import pandas as pd

    from clinfuse.training import train_run

    cache = str(tmp_path / "cache")  # shared: both runs use the same note embeddings
    plain = train_run(tiny_cohort, tmp_path / "plain", tiny_config(epochs=1, cache_dir=cache))
    fast_cfg = tiny_config(
        epochs=1, num_workers=2, load_workers=2, persist_decoded=True, cache_dir=cache
    )
    fast = train_run(tiny_cohort, tmp_path / "fast", fast_cfg)
    assert list((tmp_path / "cache" / "decoded-image").rglob("*.npy"))
    a = pd.read_csv(plain / "predictions.csv")
    b = pd.read_csv(fast / "predictions.csv")
    np.testing.assert_array_equal(a["case_id"], b["case_id"])
    np.testing.assert_array_equal(a["p_fusion"].to_numpy(), b["p_fusion"].to_numpy())


def test_scoring_workers_auto_rule_and_bad_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: every CPU (≤ 8) from 128 cases on, never inside `shared_decoding`; counts pass."""
    import os

    from clinfuse.data import PARALLEL_LOAD_MIN_ROWS, scoring_workers, shared_decoding
    from clinfuse.errors import ConfigError

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(12)), raising=False)
    assert scoring_workers("auto", PARALLEL_LOAD_MIN_ROWS) == 8
    assert scoring_workers("auto", PARALLEL_LOAD_MIN_ROWS - 1) == 0
    with shared_decoding():  # the decoded inputs live in this process
        assert scoring_workers("auto", 10_000) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert scoring_workers("auto", 10_000) == 0
    assert scoring_workers(3, 5) == 3 and scoring_workers("2", 5) == 2
    for bad in (-1, "many", 1.5, True):
        with pytest.raises(ConfigError, match="workers") as err:
            scoring_workers(bad, 500)  # type: ignore[arg-type]
        assert err.value.field == "workers"
    from types import SimpleNamespace

    from clinfuse.data import iter_scorable

    empty = SimpleNamespace(rows=[], excluded=[], manifest_path=None)
    with pytest.raises(ConfigError, match="chunk_size is 0") as err:
        next(iter_scorable(None, empty, chunk_size=0))  # type: ignore[arg-type]
    assert err.value.field == "chunk_size"


def test_parallel_scoring_gives_the_same_risks_and_exclusions(
    tiny_run: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    """predict, evaluate and the training load read files in worker processes with the same
    results; evaluate's predictions (encoders run once, fusion head on the cache) equal
    `predict`'s (the whole network per batch)."""
    import pandas as pd

    from clinfuse.evaluation import evaluate_run
    from clinfuse.model import load_run

    model = load_run(tiny_run)
    rows = pd.read_csv(tiny_cohort)
    rows.loc[3, "signal"] = "signals/missing.hea"  # one case fails to load
    manifest = tiny_cohort.parent / "with_bad_case.csv"
    rows.to_csv(manifest, index=False)
    serial, serial_excluded = model.predict(manifest, workers=0, return_excluded=True)
    parallel, parallel_excluded = model.predict(manifest, workers=2, return_excluded=True)
    pd.testing.assert_frame_equal(serial, parallel)
    assert [i.as_dict() for i in serial_excluded] == [i.as_dict() for i in parallel_excluded]
    assert rows.loc[3, "case_id"] in {i.case_id for i in parallel_excluded}
    result = evaluate_run(tiny_run, manifest, tmp_path / "ev", n_boot=0, workers=2)
    scored = result.predictions.set_index("case_id")
    expected = serial.set_index("case_id").loc[scored.index]
    for column in ["p_fusion", *(f"p_{m}" for m in model.modalities)]:
        np.testing.assert_allclose(scored[column], expected[column], atol=1e-6, equal_nan=True)
    assert set(result.excluded["case_id"]) == {i.case_id for i in serial_excluded}


def test_parallel_validation_gives_the_same_report(tiny_cohort: Path, tmp_path: Path) -> None:
    """`validate_cohort` reads the files in worker processes with the same issues, counts and
    shapes as in one process, a corrupt file included."""
    import dataclasses
    import shutil

    import pandas as pd

    from clinfuse.cohort import validate_cohort
    from clinfuse.errors import ConfigError

    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, root)
    rows = pd.read_csv(root / tiny_cohort.name)
    broken = root / "images" / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    rows.loc[5, "image"] = "images/broken.dcm"
    rows.loc[6, "signal"] = "signals/absent.hea"
    rows.to_csv(root / "manifest.csv", index=False)
    serial = validate_cohort(root / "manifest.csv", workers=0)
    parallel = validate_cohort(root / "manifest.csv", workers=2)
    assert dataclasses.asdict(serial) == dataclasses.asdict(parallel)
    assert {i.case_id for i in parallel.errors} == {rows.loc[5, "case_id"], rows.loc[6, "case_id"]}
    with pytest.raises(ConfigError, match="workers"):
        validate_cohort(root / "manifest.csv", workers=-2)


def test_a_killed_loading_process_is_a_clear_error(
    tiny_cohort: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies (the OOM killer) surfaces as a ConfigError naming the progress and
    what to do, not as a bare BrokenProcessPool."""
    import os

    from clinfuse.errors import ConfigError

    parent = os.getpid()
    rows = Cohort.from_manifest(tiny_cohort).rows[:12]
    plain = CaseLoader.try_load

    def dying(self, row):  # type: ignore[no-untyped-def]
        if os.getpid() != parent and row.case_id == rows[7].case_id:
            os._exit(9)  # as if killed
        return plain(self, row)

    monkeypatch.setattr(CaseLoader, "try_load", dying)
    loader = CaseLoader(_loader_config().data, ["image", "signal"])
    with pytest.raises(ConfigError, match="stopped after") as err:
        loader.load_many(rows, workers=2)
    assert err.value.field == "workers" and "--workers 1" in (err.value.hint or "")


def test_chunked_scoring_equals_scoring_the_cohort_whole(
    tiny_run: Path, tiny_cohort: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict and score_cohort stream the cohort in chunks (memory flat in the cohort's
    size): same risks, embeddings and exclusions — a failing case and a manifest exclusion
    included — as one chunk."""
    import pandas as pd

    import clinfuse.data
    from clinfuse.errors import CohortError
    from clinfuse.evaluation.evaluate import labelled_cohort, score_cohort
    from clinfuse.model import load_run

    model = load_run(tiny_run)
    rows = pd.read_csv(tiny_cohort)
    rows.loc[9, "signal"] = "signals/missing.hea"  # fails to load, in the second chunk
    rows.loc[20, "label"] = 7  # excluded by the manifest check
    manifest = tiny_cohort.parent / "chunks.csv"
    rows.to_csv(manifest, index=False)
    cohort = labelled_cohort(model, manifest)
    whole = score_cohort(model, cohort, workers=0)
    chunked = score_cohort(model, cohort, workers=0, chunk_size=8)
    # float32 networks on batches of other sizes may take other kernel paths: equal to
    # float32 rounding (1.1e-6 apart with the packages installed on 2026-12-07)
    pd.testing.assert_frame_equal(whole.frame, chunked.frame, atol=1e-5, rtol=0)
    for m in model.modalities:
        np.testing.assert_allclose(
            whole.cache.embeddings[m], chunked.cache.embeddings[m], atol=1e-5
        )
    assert whole.cache.case_ids == chunked.cache.case_ids == list(whole.frame["case_id"])
    excluded = [i.as_dict() for i in chunked.excluded]
    assert excluded == [i.as_dict() for i in whole.excluded]
    assert {rows.loc[9, "case_id"], rows.loc[20, "case_id"]} <= {e["case_id"] for e in excluded}
    p_whole = model.predict(manifest, workers=0)
    monkeypatch.setattr(clinfuse.data, "SCORING_CHUNK", 8)
    p_chunked, p_excluded = model.predict(manifest, workers=2, return_excluded=True)
    pd.testing.assert_frame_equal(p_whole, p_chunked, atol=1e-5, rtol=0)
    assert [i.as_dict() for i in p_excluded] == excluded
    with pytest.raises(CohortError, match="no case of the cohort could be loaded"):
        rows["signal"] = "signals/missing.hea"
        rows.to_csv(manifest, index=False)
        score_cohort(model, labelled_cohort(model, manifest), chunk_size=8)


def test_explaining_in_chunks_equals_explaining_the_cohort_whole(
    tiny_run: Path, tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`explain` streams the cohort too: the same modality Shapley values and the same case
    explanation (its image background = the first other images loaded) in chunks of 8."""
    import json

    import pandas as pd

    import clinfuse.data
    from clinfuse.explain.report import explain_run

    case = pd.read_csv(tiny_cohort).dropna(subset=["image"])["case_id"].iloc[-1]
    kw = {"case": case, "n_boot": 0, "cache_in_run": False, "workers": 0}
    explain_run(tiny_run, tiny_cohort, tmp_path / "whole", **kw)
    monkeypatch.setattr(clinfuse.data, "SCORING_CHUNK", 8)
    explain_run(tiny_run, tiny_cohort, tmp_path / "chunks", **kw)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "whole" / "modality_shapley.csv"),
        pd.read_csv(tmp_path / "chunks" / "modality_shapley.csv"),
        atol=1e-6,
        rtol=0,
    )
    whole, chunks = (
        json.loads((tmp_path / d / "cases" / case / "explanation.json").read_text())
        for d in ("whole", "chunks")
    )
    assert "image" in whole["within"] and whole["within"] == chunks["within"]
