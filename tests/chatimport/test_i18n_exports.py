"""One conversation exported by Android and iOS phones in many languages: the same words, nothing else.

For each language and phone, `inspect --json` must give the English export's per-speaker
text counts and last instant, and no placeholder may appear in a text message, a
training example or a `--sample`.
"""

import json
from datetime import timedelta

import pytest

from core.chatimport import build_examples, load_export
from core.chatimport.cli import inspect_command
from core.chatimport.placeholders import norm, table

from .wa_i18n import DATES, LAST, SCRIPT, TEXTS, export

LANGS = sorted(DATES)
PHONES = ["android", "ios"]


def _write(tmp_path, lang, phone, text=None):
    path = tmp_path / f"WhatsApp Chat with Bruno ({lang}, {phone}).txt"
    path.write_text(text if text is not None else export(lang, phone == "ios"), encoding="utf-8", newline="")
    return path


def _summary(path, capsys, *extra):
    assert inspect_command(str(path), True, *extra) == 0
    return json.loads(capsys.readouterr().out)


def _labels(lang):
    out = set()
    for key, labels in table().languages[lang].items():
        if key != "name":
            out.update(norm(x) for x in labels if "{}" not in x)
    return out


def _leaks(texts, lang):
    """Texts that are, or contain, one of the language's labels, a mark or a maps link."""
    labels = _labels(lang) | _labels("en")
    bad = []
    for t in texts:
        n = norm(t)
        if n in labels or "\u200e" in t or "maps." in t or "foursquare" in t or "omitted" in n or "<" in t:
            bad.append(t)
        elif any(lab in n for lab in labels if len(lab) > 12):  # an edited suffix left behind...
            bad.append(t)
    return bad


def test_there_are_enough_languages():
    assert len(LANGS) >= 10


@pytest.mark.parametrize("phone", PHONES)
@pytest.mark.parametrize("lang", LANGS)
def test_same_counts_and_last_instant_as_english(tmp_path, capsys, lang, phone):
    english = _summary(_write(tmp_path, "en", phone), capsys)
    other = _summary(_write(tmp_path, lang, phone), capsys)
    assert other["speakers"] == english["speakers"] == TEXTS
    assert other["last"] == english["last"]
    last = LAST if phone == "ios" else LAST.replace(second=0)
    assert other["last"] == last.isoformat()
    assert other["messages"] == len(SCRIPT)
    # Placeholders are reported by kind, and `skipped` stays exact.
    assert sum(other["skipped"].values()) == len(SCRIPT) - sum(TEXTS.values())
    assert other["placeholders"].get("location") == 2
    assert other["placeholders"].get("deleted") == 2
    assert other["placeholders"].get("call") == 2


@pytest.mark.parametrize("phone", PHONES)
@pytest.mark.parametrize("lang", LANGS)
def test_no_placeholder_in_text_or_training(tmp_path, capsys, lang, phone):
    path = _write(tmp_path, lang, phone)
    result = load_export(path)
    texts = [m.text for c in result.conversations for m in c.messages if m.kind == "text"]
    assert len(texts) == sum(TEXTS.values())
    assert not _leaks(texts, lang)
    assert "On my way" in texts  # the edited message keeps its words, without the label
    ex = build_examples(result, "Ana", val_fraction=0.2, session_gap=timedelta(days=1))
    turns = [m["content"] for e in ex.train + ex.validation for m in e["messages"]]
    assert not _leaks(turns, lang)
    sample = _summary(path, capsys, ["Bruno", "20"])
    assert sample["samples"] and not _leaks(sample["samples"], lang)


def test_a_language_missing_from_the_table_is_caught_by_structure_and_repetition(tmp_path, capsys):
    """Esperanto is not in the table: Android's <...>, iOS's U+200E and the maps link need no
    language; the deleted and missed-call labels of a group chat are caught by repetition."""
    words = {"deleted": "Ĉi tiu mesaĝo estis forigita", "missed_voice_call": "Maltrafita voĉvoko"}
    lines = []
    people = ["Ana", "Bruno", "Carla"]
    for i in range(30):
        who = people[i % 3]
        t = f"{(i // 24) + 1:02d}.04.22, {i % 24:02d}:10 - "
        if i % 5 == 0:
            body = words["deleted"]
        elif i % 5 == 1:
            body = words["missed_voice_call"]
        elif i % 5 == 2:
            body = "<Aŭdvidaĵoj preterlasitaj>"
        elif i % 5 == 3:
            body = "Loko: https://maps.google.com/?q=48.85,2.35"
        else:
            body = f"Saluton {i}, kiel vi fartas?"
        lines.append(f"{t}{who}: {body}")
    path = _write(tmp_path, "eo", "android", "\n".join(lines) + "\n")
    out = _summary(path, capsys)
    assert sum(out["speakers"].values()) == 6
    assert out["skipped"]["label"] == 12
    assert out["placeholders"] == {"repeated": 12, "media": 6, "location": 6}
    assert any("Ĉi tiu mesaĝo estis forigita" in n and "6 times from 3 speakers" in n for n in out["notes"])
    # The user can keep such a body: then it is text again.
    kept = _summary(path, capsys, None, ["Maltrafita voĉvoko"])
    assert sum(kept["speakers"].values()) == 12
    assert any("kept as text" in n for n in kept["notes"])


def test_sample_prints_only_the_turns_and_refuses_bad_arguments(tmp_path, capsys):
    path = _write(tmp_path, "cs", "android")
    assert inspect_command(str(path), False, ["Bruno", "3"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("3 of the ") and "Bruno" in out.out and "<" not in out.out
    for bad in (["Bruno", "x"], ["Nobody"]):
        assert inspect_command(str(path), False, bad) == 2
        out = capsys.readouterr()
        assert out.out == "" and out.err.startswith("error: ")
