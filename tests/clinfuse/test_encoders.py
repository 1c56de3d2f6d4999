"""Encoder contract suite, parametrized over every registered encoder (STYLE 13).

Every case builds a tiny config (32x32 images, 16^3 volumes, short notes with the
real shipped MiniLM) and checks: output shape, gradient flow (and none when frozen),
save_pretrained/from_pretrained bit-identity, fingerprint behaviour, bad input
errors, and user weights. Text-specific tests check chunking against a manual
computation and mean pooling against a hand-written sentence-transformers-style
reference using ``transformers.AutoModel`` directly.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clinfuse.encoders import (
    MINILM_SHA256,
    Encoder,
    EncoderConfig,
    TransformerNoteEncoder,
    available_encoders,
    build_encoder,
    default_text_model_path,
)
from clinfuse.errors import ConfigError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NOTE_TEXTS = [
    "Patient admitted with chest pain radiating to the left arm. Troponin elevated.",
    "Afebrile. Lungs clear.",
    # long enough for several 32-token chunks
    " ".join(["Shortness of breath on exertion, bilateral ankle oedema, orthopnoea."] * 6),
]


@dataclass
class Case:
    """One encoder configuration of the contract suite."""

    id: str
    modality: str
    config: dict[str, Any]
    make_items: Callable[[np.random.Generator, int], list[Any]]
    # bad batches given straight to forward(), each with a fragment the message must hold
    bad_inputs: list[tuple[Callable[[], Any], str]] = field(default_factory=list)
    marks: tuple[Any, ...] = ()


def _images(shape: tuple[int, ...]) -> Callable[[np.random.Generator, int], list[Any]]:
    return lambda rng, b: [rng.standard_normal(shape).astype(np.float32) for _ in range(b)]


def _image_bad(dims: int, size: int, channels: int = 1) -> list[tuple[Callable[[], Any], str]]:
    spatial = (size,) * dims
    return [
        (lambda: torch.zeros(2, channels + 1, *spatial), "in_channels"),
        (lambda: torch.zeros(2, *spatial), "spatial_dims"),
    ]


def _image_case(
    name: str, dims: int, size: int, marks: tuple[Any, ...] = (), tag: str = "", **extra: Any
) -> Case:
    return Case(
        id=f"image/{name}/{dims}d{tag}",
        modality="image",
        config={"name": name, "spatial_dims": dims, "in_channels": 1, "embed_dim": 8, **extra},
        make_items=_images((1,) + (size,) * dims),
        bad_inputs=_image_bad(dims, size),
        marks=marks,
    )


def _signals(rng: np.random.Generator, b: int) -> list[Any]:
    return [rng.standard_normal((3, 256)).astype(np.float32) for _ in range(b)]


def _rows(rng: np.random.Generator, b: int) -> list[Any]:
    out = []
    for _ in range(b):
        values = rng.standard_normal(5).astype(np.float32)
        mask = (rng.random(5) > 0.3).astype(np.float32)
        values[mask == 0] = np.nan  # missing values may be NaN; the mask decides
        out.append((values, mask))
    return out


def _notes(rng: np.random.Generator, b: int) -> list[Any]:
    return [NOTE_TEXTS[i % len(NOTE_TEXTS)] for i in range(b)]


TINY_RESNET = {"widen_factor": 0.25}
TINY_DENSENET = {"init_features": 8, "growth_rate": 4, "block_config": (2, 2, 2, 2)}

CASES: list[Case] = [
    _image_case("small_cnn", 2, 32, width=4),
    _image_case("small_cnn", 3, 16, width=4, norm="group"),
    _image_case("densenet121", 2, 32, **TINY_DENSENET),
    _image_case("densenet121", 3, 32, **TINY_DENSENET),
    _image_case("resnet18", 2, 32, **TINY_RESNET),
    _image_case("resnet18", 3, 16, **TINY_RESNET),
    _image_case("resnet34", 2, 32, **TINY_RESNET),
    _image_case("resnet34", 3, 16, **TINY_RESNET),
    _image_case("resnet50", 2, 32, **TINY_RESNET),
    _image_case("resnet50", 3, 16, **TINY_RESNET),
    _image_case("efficientnet-b0", 2, 32),
    _image_case("efficientnet-b0", 3, 32, marks=(pytest.mark.slow,)),
    # full-size architectures at tiny inputs (slow on 2 CPU cores)
    _image_case("densenet121", 2, 32, tag="/full"),  # the real DenseNet-121
    _image_case("resnet50", 2, 32, marks=(pytest.mark.slow,), tag="/full"),
    Case(
        id="signal/resnet1d/batch",
        modality="signal",
        config={"name": "resnet1d", "in_leads": 3, "depth": 2, "width": 8, "embed_dim": 8},
        make_items=_signals,
        bad_inputs=[
            (lambda: torch.zeros(2, 4, 256), "in_leads"),
            (lambda: torch.zeros(2, 3, 4), "shorter"),
            (lambda: torch.zeros(3, 256), "(B, leads, T)"),
        ],
    ),
    Case(
        id="signal/resnet1d/group",
        modality="signal",
        config={
            "name": "resnet1d",
            "in_leads": 3,
            "depth": 3,
            "width": 8,
            "norm": "group",
            "embed_dim": 8,
        },
        make_items=_signals,
        bad_inputs=[(lambda: torch.zeros(2, 1, 256), "in_leads")],
    ),
    Case(
        id="tabular/mlp",
        modality="tabular",
        config={"name": "mlp", "n_features": 5, "hidden": [16, 16], "embed_dim": 8},
        make_items=_rows,
        bad_inputs=[
            (lambda: {"values": torch.zeros(2, 4), "mask": torch.ones(2, 4)}, "n_features"),
            (
                lambda: {"values": torch.full((2, 5), float("nan")), "mask": torch.ones(2, 5)},
                "non-finite",
            ),
            (lambda: torch.zeros(2, 10), "values"),
        ],
    ),
    Case(
        id="tabular/ft_transformer",
        modality="tabular",
        config={
            "name": "ft_transformer",
            "n_features": 5,
            "d_token": 8,
            "n_heads": 2,
            "embed_dim": 8,
        },
        make_items=_rows,
        bad_inputs=[
            (lambda: {"values": torch.zeros(2, 4), "mask": torch.ones(2, 4)}, "n_features"),
            (
                lambda: {"values": torch.full((2, 5), float("inf")), "mask": torch.ones(2, 5)},
                "non-finite",
            ),
            (lambda: torch.zeros(2, 10), "values"),
        ],
    ),
    Case(
        id="note/transformer",
        modality="note",
        config={
            "name": "transformer",
            "freeze": False,
            "embed_dim": 8,
            "max_length": 32,
            "stride": 8,
        },
        make_items=_notes,
        bad_inputs=[
            (lambda: torch.zeros(2, 8), "collate"),
            (lambda: {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, "attention_mask"),
        ],
    ),
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine (other
    test processes, pytest-xdist) OpenMP spin-waiting made them ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PARAMS = [pytest.param(c, id=c.id, marks=c.marks) for c in CASES]
BATCH = 2


def _build(case: Case, seed: int = 0, **overrides: Any) -> Encoder:
    torch.manual_seed(seed)
    return build_encoder(case.modality, {**case.config, **overrides})


def _batch(case: Case, encoder: Encoder, seed: int = 0) -> Any:
    return encoder.collate(case.make_items(np.random.default_rng(seed), BATCH))


def _perturb(encoder: Encoder, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


# --------------------------------------------------------------------- registry
def test_every_registered_encoder_is_in_the_contract_suite() -> None:
    covered = {(c.modality, c.config["name"]) for c in CASES}
    registered = {(m, n) for m, names in available_encoders().items() for n in names}
    assert registered == covered
    # every image network is exercised in 2D and 3D
    for name in available_encoders()["image"]:
        dims = {c.config["spatial_dims"] for c in CASES if c.config.get("name") == name}
        assert dims == {2, 3}, name


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ConfigError, match="resnet18") as info:
        build_encoder("image", {"name": "vit-huge"})
    assert "vit-huge" in str(info.value) and "small_cnn" in str(info.value)
    with pytest.raises(ConfigError, match="tabular"):
        build_encoder("genome", {"name": "mlp"})


def test_invalid_field_is_config_error() -> None:
    with pytest.raises(ConfigError, match="widht"):
        build_encoder("image", {"name": "small_cnn", "widht": 8})
    with pytest.raises(ConfigError, match="spatial_dims"):
        build_encoder("image", {"name": "small_cnn", "spatial_dims": 4})


def test_default_name_and_config_objects() -> None:
    enc = build_encoder("tabular", {"n_features": 2})
    assert enc.config.name == "mlp" and enc.out_dim == 128
    # a base EncoderConfig is upgraded to the family's config
    enc2 = build_encoder("signal", EncoderConfig(name="resnet1d", embed_dim=4))
    assert enc2.out_dim == 4 and enc2.config.depth == 4


def test_import_is_light() -> None:
    code = (
        "import sys, clinfuse.encoders as e; e.available_encoders();"
        "print('transformers' in sys.modules, 'monai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize("case", PARAMS)
def test_output_shape(case: Case) -> None:
    enc = _build(case)
    out = enc(_batch(case, enc))
    assert out.shape == (BATCH, enc.out_dim) == (BATCH, case.config["embed_dim"])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("case", PARAMS)
def test_gradient_reaches_every_trainable_parameter(case: Case) -> None:
    enc = _build(case).train()
    out = enc(_batch(case, enc))
    (out * torch.randn_like(out)).sum().backward()
    trainable = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert sum(float(p.grad.abs().sum()) for _, p in trainable) > 0


@pytest.mark.parametrize("case", PARAMS)
def test_frozen_encoder_has_no_gradient_and_stays_eval(case: Case) -> None:
    enc = _build(case, freeze=True)
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(_batch(case, enc))
    assert not out.requires_grad
    # eval mode: the same batch gives the same output twice
    assert torch.equal(out, enc(_batch(case, enc)))


@pytest.mark.parametrize("case", PARAMS)
def test_save_and_reload_is_bit_identical(case: Case, tmp_path: Path) -> None:
    enc = _build(case)
    batch = _batch(case, enc)
    enc.train()
    enc(batch)  # update BatchNorm running statistics so buffers matter
    enc.eval()
    with torch.no_grad():
        expected = enc(batch)
    enc.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "config.json").is_file()
    assert (tmp_path / "enc" / "model.safetensors").is_file()
    again = Encoder.from_pretrained(tmp_path / "enc")
    assert type(again) is type(enc) and not again.training
    assert again.config == enc.config
    with torch.no_grad():
        assert torch.equal(
            again(again.collate(case.make_items(np.random.default_rng(0), BATCH))), expected
        )
    assert again.fingerprint() == enc.fingerprint()
    # a subclass refuses a folder of another family
    other = TransformerNoteEncoder if case.modality != "note" else type(_build(CASES[0]))
    with pytest.raises(ConfigError, match="not a"):
        other.from_pretrained(tmp_path / "enc")


@pytest.mark.parametrize("case", PARAMS)
def test_fingerprint_tracks_weights(case: Case) -> None:
    enc = _build(case)
    fp = enc.fingerprint()
    assert len(fp) == 64 and fp == enc.fingerprint()
    assert _build(case).fingerprint() == fp  # same seed, same weights
    with torch.no_grad():
        next(p for p in enc.parameters() if p.requires_grad).view(-1)[0] += 1e-3
    assert enc.fingerprint() != fp


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_raises_config_error(case: Case) -> None:
    enc = _build(case)
    assert case.bad_inputs
    for make_bad, fragment in case.bad_inputs:
        with pytest.raises(ConfigError, match=None) as info:
            enc(make_bad())
        assert fragment in str(info.value), (fragment, str(info.value))
    with pytest.raises(ConfigError):
        enc.collate([])


@pytest.mark.parametrize("case", PARAMS)
def test_user_weights_load_and_change_output(case: Case, tmp_path: Path) -> None:
    base = _build(case).eval()
    donor = _build(case).eval()
    _perturb(donor)
    batch = _batch(case, base)
    with torch.no_grad():
        out_base, out_donor = base(batch), donor(batch)
    assert not torch.allclose(out_base, out_donor)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    loaded = _build(case, weights=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch), out_donor)
    assert loaded.fingerprint() == donor.fingerprint() != base.fingerprint()


# ----------------------------------------------------------- weights files
def _tabular(name: str = "mlp") -> Encoder:
    return _build(CASES[[c.id for c in CASES].index(f"tabular/{name}")])


def test_pt_state_dict_of_backbone_loads(tmp_path: Path) -> None:
    donor = _tabular()
    _perturb(donor)
    torch.save(donor.net.state_dict(), tmp_path / "net.pt")  # backbone keys, no "net." prefix
    enc = build_encoder(
        "tabular", {**donor.config.model_dump(), "weights": str(tmp_path / "net.pt")}
    )
    assert enc.fingerprint() == donor.fingerprint()


class _NotTensors:
    pass


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1), "payload": _NotTensors()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="weights-only"):
        build_encoder("tabular", {"n_features": 5, "weights": str(tmp_path / "evil.pt")})


def test_mismatched_weights_name_the_keys(tmp_path: Path) -> None:
    save_file({"bogus.weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match=r"bogus\.weight"):
        build_encoder("tabular", {"n_features": 5, "weights": str(tmp_path / "w.safetensors")})
    with pytest.raises(ConfigError, match="not found"):
        build_encoder("tabular", {"n_features": 5, "weights": str(tmp_path / "nope.safetensors")})


# ------------------------------------------------------------ modality extras
@pytest.mark.parametrize("name", ["mlp", "ft_transformer"])
def test_tabular_missing_values_are_not_data(name: str) -> None:
    enc = _tabular(name).eval()
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])
    with torch.no_grad():
        a = enc({"values": values, "mask": mask})
        b = enc({"values": values.clone().index_fill_(1, torch.tensor([2]), 99.0), "mask": mask})
        c = enc((values, torch.ones_like(mask)))
    assert torch.equal(a, b)  # the value behind mask 0 is ignored
    assert not torch.allclose(a, c)  # observed vs missing differs


def test_ft_transformer_attends_across_features() -> None:
    """One feature's value changes the embedding through attention, and so does the
    order of the columns (each feature has its own token parameters)."""
    enc = _tabular("ft_transformer").eval()
    values = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.5]])
    mask = torch.ones_like(values)
    with torch.no_grad():
        a = enc((values, mask))
        b = enc((values.clone().index_fill_(1, torch.tensor([3]), 3.0), mask))
        c = enc((values.flip(1), mask))
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_ft_transformer_heads_must_divide_the_token_width() -> None:
    with pytest.raises(ConfigError, match="d_token=10 is not a multiple of n_heads=4"):
        build_encoder("tabular", {"name": "ft_transformer", "n_features": 3, "d_token": 10})


def test_ft_transformer_per_sample_gradients_under_opacus() -> None:
    """DP-SGD clips per-case gradients: Opacus' (hooks for Linear/LayerNorm, torch.func
    for the tokenizer) must equal one-case-at-a-time autograd."""
    import copy
    import warnings

    from opacus import GradSampleModule
    from torch import nn

    torch.manual_seed(0)
    encoder = _build(
        CASES[[c.id for c in CASES].index("tabular/ft_transformer")],
        attention_dropout=0.0,
        ffn_dropout=0.0,
    )

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.linear = encoder, nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(self.encoder((x[:, 0], x[:, 1])))

    model = Head()
    reference = copy.deepcopy(model)
    rng = np.random.default_rng(3)
    x = torch.from_numpy(
        np.stack([rng.standard_normal((6, 5)), (rng.random((6, 5)) > 0.3)], axis=1).astype(
            np.float32
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' full-backward-hook notice
        wrapped = GradSampleModule(model, loss_reduction="sum")
        wrapped(x).sum().backward()
    per_sample = {n.removeprefix("_module."): p.grad_sample for n, p in wrapped.named_parameters()}
    assert len(per_sample) == len(list(reference.parameters()))
    for i in range(len(x)):
        reference.zero_grad(set_to_none=True)
        reference(x[i : i + 1]).sum().backward()
        for name, p in reference.named_parameters():
            expected = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(per_sample[name][i], expected, atol=1e-6, rtol=1e-5)


def test_signal_padding_mask_excludes_padding() -> None:
    enc = build_encoder("signal", {"in_leads": 2, "depth": 2, "width": 8, "embed_dim": 4}).eval()
    rng = np.random.default_rng(0)
    sig = rng.standard_normal((2, 512)).astype(np.float32)
    padded = np.concatenate([sig, np.zeros((2, 512), np.float32)], axis=1)
    valid = np.arange(1024) < 512
    with torch.no_grad():
        masked = enc(enc.collate([(padded, valid)]))
        unmasked = enc(enc.collate([padded]))
        other = padded.copy()
        other[:, 600:] = 5.0  # only changes padding positions far from valid data
        masked_other = enc(enc.collate([(other, valid)]))
    assert not torch.allclose(masked, unmasked)
    assert torch.allclose(masked, masked_other, atol=1e-6)


def test_collate_rejects_mixed_shapes() -> None:
    enc = build_encoder("image", {"width": 4})
    with pytest.raises(ConfigError, match="share one shape"):
        enc.collate([np.zeros((1, 32, 32)), np.zeros((1, 32, 48))])
    with pytest.raises(ConfigError, match="channel-first"):
        enc.collate([np.zeros((32, 32))])
    with pytest.raises(ConfigError, match="at least 16"):
        enc(torch.zeros(1, 1, 8, 8))


# ------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def minilm() -> TransformerNoteEncoder:
    enc = build_encoder("note", {"name": "transformer"})
    assert isinstance(enc, TransformerNoteEncoder)
    return enc


@pytest.fixture(scope="module")
def hf_reference() -> tuple[Any, Any]:
    """Tokenizer and AutoModel loaded directly with transformers (the reference)."""
    from transformers import AutoModel, AutoTokenizer

    path = default_text_model_path()
    return (
        AutoTokenizer.from_pretrained(path, local_files_only=True),
        AutoModel.from_pretrained(path, local_files_only=True).eval(),
    )


def test_minilm_defaults_and_pinned_hash(minilm: TransformerNoteEncoder) -> None:
    assert minilm.config.freeze and not minilm.training
    assert minilm.out_dim == 384 and minilm.max_length == 256
    on_disk = hashlib.sha256((default_text_model_path() / "model.safetensors").read_bytes())
    assert minilm.weights_sha256 == on_disk.hexdigest() == MINILM_SHA256["model.safetensors"]


def test_pinned_hash_mismatch_is_refused(tmp_path: Path) -> None:
    from clinfuse.encoders.text import _verify_pinned

    for name in MINILM_SHA256:
        (tmp_path / name).write_bytes(b"not the model")
    with pytest.raises(ConfigError, match="SHA-256"):
        _verify_pinned(tmp_path)


def test_mean_pooling_matches_sentence_transformers_reference(
    minilm: TransformerNoteEncoder, hf_reference: tuple[Any, Any]
) -> None:
    """Reference: sentence-transformers' Pooling(mean) written out with AutoModel."""
    tokenizer, model = hf_reference
    notes = NOTE_TEXTS[:2]
    enc = tokenizer(notes, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    reference = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    ours = minilm.embed(notes)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # batching/padding does not change a note's embedding
    torch.testing.assert_close(minilm.embed(notes[1:]), ours[1:], atol=1e-5, rtol=1e-5)


def test_cls_pooling_matches_reference(hf_reference: tuple[Any, Any]) -> None:
    tokenizer, model = hf_reference
    enc = build_encoder("note", {"pooling": "cls"})
    with torch.no_grad():
        reference = model(**tokenizer(NOTE_TEXTS[:1], return_tensors="pt")).last_hidden_state[:, 0]
    torch.testing.assert_close(enc.embed(NOTE_TEXTS[:1]), reference, atol=1e-5, rtol=1e-5)


def test_long_note_is_chunked_not_truncated(
    minilm: TransformerNoteEncoder, hf_reference: tuple[Any, Any]
) -> None:
    tokenizer, model = hf_reference
    window, stride = minilm.max_length, minilm.config.stride
    long_note = " ".join(
        f"day {i}: patient stable, vitals normal, plan unchanged." for i in range(80)
    )
    full_ids = tokenizer(long_note, add_special_tokens=False)["input_ids"]
    assert len(full_ids) >= 3 * window

    batch = minilm.collate([NOTE_TEXTS[1], long_note])
    n_chunks = batch["n_chunks"].tolist()
    assert n_chunks[0] == 1 and n_chunks[1] >= 3
    assert batch["chunk_to_case"].tolist() == [0] + [1] * n_chunks[1]

    # the chunks cover every token, overlapping by `stride`: nothing is dropped
    chunks = []
    for ids, mask in zip(batch["input_ids"][1:], batch["attention_mask"][1:], strict=True):
        chunks.append(ids[mask.bool()][1:-1].tolist())  # strip [CLS] ... [SEP]
    rebuilt = chunks[0] + [t for c in chunks[1:] for t in c[stride:]]
    assert rebuilt == full_ids

    # the note's embedding is the mean of its chunks, each embedded on its own
    per_chunk = []
    with torch.no_grad():
        for ids in chunks:
            x = torch.tensor([[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]])
            h = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            per_chunk.append(h.mean(1)[0])
    expected = torch.stack(per_chunk).mean(0)
    with torch.no_grad():
        got = minilm(batch)
    assert got.shape == (2, 384)
    torch.testing.assert_close(got[1], expected, atol=1e-5, rtol=1e-5)


def test_unknown_model_name_says_downloads_are_disabled(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="local folder") as info:
        build_encoder("note", {"model_name_or_path": "no-such-org/no-such-bert-xyz"})
    assert "download" in str(info.value)


def test_stride_must_fit_window() -> None:
    with pytest.raises(ConfigError, match="stride"):
        build_encoder("note", {"max_length": 16, "stride": 16})


def test_note_collate_rejects_missing_text(minilm: TransformerNoteEncoder) -> None:
    with pytest.raises(ConfigError, match="item 1"):
        minilm.collate(["fine", None])
