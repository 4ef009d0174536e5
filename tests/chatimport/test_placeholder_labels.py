"""WhatsApp's own labels in every language of the table, the structural rules, the repetition
guard, non-Gregorian calendars and encodings."""

import json
from datetime import datetime

import pytest

from core.chatimport import load_export
from core.chatimport.guard import RepetitionGuard, label_shape
from core.chatimport.model import Message
from core.chatimport.placeholders import LABELS_FILE, classify, classify_full, table
from core.errors import ExportInvalid

LRM = "\u200e"
KINDS = json.loads(LABELS_FILE.read_text("utf-8"))["kinds"]
MOST_USED = ["pt", "es", "hi", "id", "ar", "ru", "de", "it", "fr", "tr", "ur", "bn", "fa", "nl", "pl", "uk", "ms",
             "th", "vi", "he", "cs", "ro", "hu", "sw", "ta", "te", "mr", "gu", "kn", "ml", "pa", "fil", "zh_Hans",
             "zh_Hant", "ja", "ko", "el", "sv", "ca"]


def test_the_table_covers_the_languages_with_most_users():
    assert set(MOST_USED) <= set(table().languages)
    assert len(table().languages) >= 30


@pytest.mark.parametrize("lang", sorted(table().languages))
def test_every_label_of_a_language_is_a_placeholder(lang):
    for key, labels in table().languages[lang].items():
        if key == "name":
            continue
        kind, placeholder = KINDS[key]
        for label in labels:
            if "{}" in label:  # a system line with names: only on lines without an author
                line = label.replace("{}", "Ana Maria", 1).replace("{}", "Bruno")
                assert classify(line, False)[0] == "system" and classify(line, False)[3] == placeholder, line
                continue
            if key == "edited":  # a suffix: the words before it stay
                assert classify(f"see you soon {label}", True)[:2] == ("text", "see you soon"), label
                continue
            if key == "location" and len(label.split()) <= 3:
                got = classify(f"{label}: https://maps.google.com/?q=-23.5505,-46.6333", True)
                assert got[0] == "media" and got[3] == "location", label
                if len(label.split()) == 1:
                    assert classify(label, True)[0] == "text"  # a lone word can be speech
                    continue
            for body in (label, LRM + label, label + "."):  # Android as is, iOS after U+200E, a final '.'
                got = classify(body, True)
                assert got[0] != "text" and got[1] == "", (lang, key, body, got)
                assert got[3] == placeholder, (lang, key, body, got)
                assert got == classify_full(body, True)


@pytest.mark.parametrize("body,placeholder", [
    ("<Média vynechány>", "media"),  # Czech Android, whatever the table says
    ("<Медіа пропущено>", "media"),  # a wording the table does not hold
    (f"Some file.txt {LRM}document omitted", "document"),
    (f"Resume.pdf • {LRM}2 pages {LRM}document omitted", "document"),
    (f"Zpráva.pdf • {LRM}3 strany {LRM}dokument vynechán", "document"),
    (f"Tabulka.xlsx {LRM}etwas Unbekanntes", "document"),  # unknown label after a file name
    ("IMG-20220327-WA0007.jpg (fichier joint)", "attachment"),
    (f"{LRM}<attached: 00000035-PHOTO-2022-03-27-11-59-01.jpg>", "attachment"),
    ("Poloha: https://maps.google.com/?q=50.08,14.42", "location"),
    ("Ubicación en tiempo real: https://maps.google.com/?q=1,2", "location"),
    (f"{LRM}Standort: https://maps.apple.com/?ll=52.5,13.4&q=Brandenburger%20Tor", "location"),
    ("location: https://foursquare.com/v/4b5e1f2af964a520e17d29e3", "location"),
    ("null", "media"),
])
def test_structure_catches_placeholders_in_any_language(body, placeholder):
    kind, text, _, got = classify(body, True)
    assert kind != "text" and text == "" and got == placeholder


@pytest.mark.parametrize("body", [
    "see https://maps.google.com/?q=1,2 for the place",  # a link inside speech
    "I <3 you", "a.pdf is attached, look", "Position", "Hely", "2 pages omitted? no",
    "meet me at 5: https://example.com/x",
])
def test_speech_that_looks_a_little_like_a_placeholder_stays_text(body):
    assert classify(body, True)[0] == "text"


def test_label_shape():
    assert label_shape("Ujumbe huu ulifutwa")
    assert label_shape("未接语音通话")
    for speech in ("ok", "hahaha", "😂😂", "Where are you?", "see you at 8", "哈哈哈", "lol!!"):
        assert not label_shape(speech), speech


def _msg(speaker, text):
    return Message(speaker=speaker, time=None, text=text)


def test_guard_sets_aside_an_exact_label_from_several_speakers_only():
    guard = RepetitionGuard()
    for i in range(6):
        guard.see(_msg("Ana" if i % 2 else "Bruno", "Simu ya sauti ambayo haikupokelewa"))
        guard.see(_msg("Ana", "Nakupenda sana mpenzi"))  # one person's catchphrase
        # people vary how they write the same words; a label never does
        guard.see(_msg("Ana" if i % 2 else "Bruno", "Good night" if i % 3 else "good night!"))
    assert set(guard.decide()) == {"Simu ya sauti ambayo haikupokelewa"}
    m = guard.apply(_msg("Ana", "Simu ya sauti ambayo haikupokelewa"))
    assert (m.kind, m.text, m.placeholder) == ("label", "", "repeated")
    assert "appears 6 times from 2 speakers; treated as a placeholder" in guard.notes()[0]


def test_guard_keeps_what_the_user_names():
    guard = RepetitionGuard(keep=["simu ya sauti ambayo haikupokelewa."])
    for i in range(6):
        guard.see(_msg("Ana" if i % 2 else "Bruno", "Simu ya sauti ambayo haikupokelewa"))
    assert guard.decide() == {}
    assert "kept as text" in guard.notes()[0]


def test_guard_in_a_large_lazily_read_export(tmp_path, monkeypatch):
    import core.chatimport.loader as loader

    monkeypatch.setattr(loader, "LAZY_BYTES", 100)
    lines = [f"01/04/2022, 10:{i:02d} - {'Ana' if i % 2 else 'Bruno'}: "
             + ("Mesaĝo forigita de la sendinto" if i % 3 == 0 else f"saluton {i}") for i in range(30)]
    path = tmp_path / "chat.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = load_export(path)
    assert r.skipped == {"label": 10} and sum(r.speakers.values()) == 20
    assert sum(1 for _, m in r.iter_messages() if m.kind == "label") == 10
    assert all("forigita" not in m.text for _, m in r.iter_messages())


# ---- calendars -------------------------------------------------------------------------------

GREGORIAN = ["[3/27/22, 21:41:35] Ana: hola", "[3/28/22, 08:00:00] Bruno: hi"]


@pytest.mark.parametrize("lines", [
    ["[3/27/2565 BE, 21:41:35] Ana: hola", "[3/28/2565 BE, 08:00:00] Bruno: hi"],  # Buddhist, iOS
    ["27/3/2565 21:41:35 - Ana: hola", "28/3/2565 08:00:00 - Bruno: hi"],  # Buddhist, Android
    ["[3/27/R4, 21:41:35] Ana: hola", "[3/28/R4, 08:00:00] Bruno: hi"],  # Japanese era after the date
    ["[R4/3/27 21:41:35] Ana: hola", "[R4/3/28 8:00:00] Bruno: hi"],  # ... before it
    ["[令和4/03/27 21:41:35] Ana: hola", "[令和4/03/28 8:00:00] Bruno: hi"],
    ["[H30/3/27 21:41:35] Ana: hola", "[H30/3/28 8:00:00] Bruno: hi"],  # Heisei 30 is 2018
    ["[111/3/27 21:41:35] Ana: hola", "[111/3/28 08:00:00] Bruno: hi"],  # ROC/Minguo 111
    ["[民國111/3/27 21:41:35] Ana: hola", "[民國111/3/28 08:00:00] Bruno: hi"],
])
def test_other_calendars_read_as_the_same_instants(tmp_path, lines):
    path = tmp_path / "chat.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = load_export(path)
    year = 2018 if "H30" in lines[0] else 2022
    assert (r.first, r.last) == (datetime(year, 3, 27, 21, 41, 35), datetime(year, 3, 28, 8, 0, 0))
    assert r.speakers == {"Ana": 1, "Bruno": 1}


# ---- encodings -------------------------------------------------------------------------------

CHAT = "27/03/2022, 21:41 - José Müller: Olá, café às três?\n27/03/2022, 21:42 - Zoë: Ça va, à bientôt\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_unicode_encodings_read_exactly(tmp_path, encoding):
    path = tmp_path / "chat.txt"
    path.write_bytes(CHAT.encode(encoding))
    r = load_export(path)
    assert list(r.speakers) == ["José Müller", "Zoë"] and not r.notes


def test_windows_1252_is_read_with_a_note(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_bytes(CHAT.replace("Olá", "Olá – “ok”").encode("cp1252"))
    r = load_export(path)
    assert list(r.speakers) == ["José Müller", "Zoë"]
    texts = [m.text for m in r.conversations[0].messages]
    assert texts[0] == "Olá – “ok”, café às três?"
    assert r.notes == ["chat.txt: read as Windows-1252; if names look wrong, export the chat again."]


def test_windows_1252_bytes_late_in_a_long_file(tmp_path):
    """The first 64 KB are plain ASCII: the whole file decides, not its head."""
    lines = [f"27/03/2022, 10:{i % 60:02d} - Ana: line {i}" for i in range(3000)]
    path = tmp_path / "chat.txt"
    path.write_bytes(("\n".join(lines) + "\n").encode("ascii") + CHAT.encode("cp1252"))
    r = load_export(path)
    assert "José Müller" in r.speakers and r.notes[0].endswith("export the chat again.")


def test_utf8_with_a_bad_byte_is_refused_not_misread(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_bytes(CHAT.encode("utf-8") + b"27/03/2022, 21:43 - Ana: caf\xe9\n")
    with pytest.raises(ExportInvalid, match="not UTF-8"):
        load_export(path)
