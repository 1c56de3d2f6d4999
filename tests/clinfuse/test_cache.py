"""The frozen-encoder embedding cache: reused when nothing changed, never stale when something did."""

from __future__ import annotations

import os

import numpy as np

from clinfuse.cache import EmbeddingCache, source_identity
from clinfuse.cohort import Cohort
from clinfuse.data import CaseLoader
from clinfuse.model import load_run
from clinfuse.training.embed import attach_embeddings


def test_keys_change_with_every_part_of_the_identity(tmp_path):
    note = tmp_path / "n.txt"
    note.write_text("Pt c/o SOB.")
    a = EmbeddingCache(tmp_path / "c", "note", "f" * 64, {"max_length": 256})
    key = a.key("c1", source_identity(note))
    assert key == a.key("c1", source_identity(note))
    assert key != a.key("c2", source_identity(note))
    assert key != EmbeddingCache(tmp_path / "c", "note", "e" * 64, {"max_length": 256}).key(
        "c1", source_identity(note)
    )
    assert key != EmbeddingCache(tmp_path / "c", "note", "f" * 64, {"max_length": 128}).key(
        "c1", source_identity(note)
    )
    note.write_text("Pt c/o SOB and fever.")  # new content: new size and mtime
    assert key != a.key("c1", source_identity(note))
    assert source_identity(text="abc") != source_identity(text="abd")


def test_round_trip_and_damaged_entries(tmp_path):
    cache = EmbeddingCache(tmp_path, "image", "a" * 64)
    key = cache.key("c1", "file:x:1:2")
    assert cache.get(key) is None
    vec = np.arange(5, dtype=np.float32)
    cache.put(key, vec)
    np.testing.assert_array_equal(cache.get(key), vec)
    path = next(tmp_path.rglob("*.npy"))
    path.write_bytes(b"garbage")  # e.g. a disk that filled up mid-write
    assert cache.get(key) is None


def test_attach_embeddings_reads_the_cache_and_recomputes_changed_notes(
    tiny_run, tiny_cohort, tmp_path, monkeypatch
):
    monkeypatch.setenv("CLINFUSE_CACHE", str(tmp_path / "cache"))
    model = load_run(tiny_run)
    cohort = Cohort.from_manifest(tiny_cohort)
    rows = [r for r in cohort.rows if r.note is not None][:4]
    loader = CaseLoader(model.config.data, model.modalities, model.tabular)
    cases = loader.load_many(rows).cases
    first = attach_embeddings(model, cases, ["note"])
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4

    encoder = model.network.encoders["note"]
    calls = []
    original = encoder.forward

    def counting(inputs):
        calls.append(inputs["n_cases"])
        return original(inputs)

    monkeypatch.setattr(encoder, "forward", counting)
    again = attach_embeddings(model, cases, ["note"])
    assert calls == []  # every embedding came from the cache
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["note_embedding"], b["note_embedding"])

    # a note whose text changed is embedded again, not served stale
    changed = dict(cases[0])
    changed["note"] = cases[0]["note"] + " Denies chest pain."
    changed["sources"] = {**cases[0]["sources"], "note": source_identity(text=changed["note"])}
    third = attach_embeddings(model, [changed, *cases[1:]], ["note"])
    assert calls == [1]
    assert not np.array_equal(third[0]["note_embedding"], first[0]["note_embedding"])


def test_missing_modality_gets_no_embedding(tiny_run, tiny_cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("CLINFUSE_CACHE", str(tmp_path / "cache"))
    model = load_run(tiny_run)
    cohort = Cohort.from_manifest(tiny_cohort)
    row = next(r for r in cohort.rows if r.note is None and r.note_text is None)
    case = CaseLoader(model.config.data, model.modalities, model.tabular).load(row)
    out = attach_embeddings(model, [case], ["note"])
    assert out[0].get("note_embedding") is None
    assert not os.path.exists(tmp_path / "cache")
