"""One WhatsApp conversation written as Android and iOS phones set to many languages export it.

The same script (texts, media, documents, stickers, GIFs, contact cards, locations,
deleted messages, missed calls, an edited message) is rendered with each language's
labels from `whatsapp_labels.json` and the phone's date layout, so every export must
give the same per-speaker text counts and the same last instant as the English one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core.chatimport.placeholders import table

NNBSP, NBSP, LRM = "\u202f", "\u00a0", "\u200e"
ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
START = datetime(2022, 3, 27, 9, 5, 7)


def _clock12(pattern: str, am: str, pm: str, digits=None):
    """A 12-hour header: `pattern` formatted with t, h (1-12) and ap (the AM/PM word)."""
    def render(t: datetime) -> str:
        out = pattern.format(t=t, h=t.hour % 12 or 12, ap=pm if t.hour >= 12 else am)
        return out.translate(digits) if digits else out
    return render


# Per language: (Android header, iOS header), each a function of the time.
_us_a = _clock12("{t.month}/{t.day}/{t:%y}, {h}:{t:%M}" + NNBSP + "{ap} - ", "AM", "PM")
_us_i = _clock12("[{t.month}/{t.day}/{t:%y}, {h}:{t:%M:%S}" + NNBSP + "{ap}] ", "AM", "PM")
_es_a = _clock12("{t.day}/{t.month}/{t:%y}, {h}:{t:%M}" + NBSP + "{ap} - ", "a. m.", "p. m.")
_ko_a = _clock12("{t.year}. {t.month}. {t.day}. {ap} {h}:{t:%M} - ", "오전", "오후")
_ar_a = _clock12("\u200f{t.day}\u200f/{t.month}\u200f/{t.year} {h}:{t:%M} {ap} - ", "ص", "م", ARABIC)
_hi_a = _clock12("{t.day}/{t.month}/{t:%y}, {h}:{t:%M}" + NNBSP + "{ap} - ", "am", "pm")


def _fmt(android: str, ios: str):
    return (lambda t: t.strftime(android) + " - ", lambda t: t.strftime(ios) + " ")


DATES = {
    "en": (_us_a, _us_i),
    "de": _fmt("%d.%m.%y, %H:%M", "[%d.%m.%y, %H:%M:%S]"),
    "es": (_es_a, _fmt("", "[%d/%m/%y, %H:%M:%S]")[1]),
    "fr": _fmt("%d/%m/%Y %H:%M", "[%d/%m/%Y %H:%M:%S]"),
    "pt": _fmt("%d/%m/%Y %H:%M", "[%d/%m/%Y, %H:%M:%S]"),
    "it": _fmt("%d/%m/%y, %H:%M", "[%d/%m/%y, %H:%M:%S]"),
    "nl": _fmt("%d-%m-%Y %H:%M", "[%d-%m-%Y %H:%M:%S]"),
    "ru": _fmt("%d.%m.%Y, %H:%M", "[%d.%m.%Y, %H:%M:%S]"),
    "uk": _fmt("%d.%m.%y, %H:%M", "[%d.%m.%y, %H:%M:%S]"),
    "tr": _fmt("%d.%m.%Y %H:%M", "[%d.%m.%Y %H:%M:%S]"),
    "id": _fmt("%d/%m/%y %H.%M", "[%d/%m/%y %H.%M.%S]"),
    "cs": _fmt("%d.%m.%y %H:%M", "[%d.%m.%y %H:%M:%S]"),
    "pl": _fmt("%d.%m.%Y, %H:%M", "[%d.%m.%Y, %H:%M:%S]"),
    "sv": _fmt("%Y-%m-%d %H:%M", "[%Y-%m-%d %H:%M:%S]"),
    "ja": _fmt("%Y/%m/%d %H:%M", "[%Y/%m/%d %H:%M:%S]"),
    "zh_Hans": _fmt("%Y/%m/%d %H:%M", "[%Y/%m/%d %H:%M:%S]"),
    "ko": (_ko_a, _fmt("", "[%Y. %m. %d. %H:%M:%S]")[1]),
    "ar": (_ar_a, _fmt("", "[%d/%m/%Y، %H:%M:%S]")[1]),
    "hi": (_hi_a, _fmt("", "[%d/%m/%y, %H:%M:%S]")[1]),
    "vi": _fmt("%d/%m/%Y, %H:%M", "[%d/%m/%Y, %H:%M:%S]"),
    "sw": _fmt("%d/%m/%Y, %H:%M", "[%d/%m/%Y, %H:%M:%S]"),
    "he": _fmt("%d.%m.%Y, %H:%M", "[%d.%m.%Y, %H:%M:%S]"),
    "el": _fmt("%d/%m/%y, %H:%M", "[%d/%m/%y, %H:%M:%S]"),
}
# The Thai phone writes Buddhist-era years.
DATES["th"] = (lambda t: f"{t.day}/{t.month}/{t.year + 543} {t:%H:%M} - ",
               lambda t: f"[{t.day}/{t.month}/{t.year + 543} {t:%H:%M:%S}] ")

# The conversation: (speaker, what). Texts are the same in every language: only the labels change.
SCRIPT = [
    ("Ana", "text:Hi! Did you get home?"), ("Bruno", "text:Yes, just now"), ("Bruno", "image"),
    ("Ana", "text:Nice photo"), ("Ana", "sticker"), ("Bruno", "deleted"), ("Bruno", "text:Sorry, wrong chat"),
    ("Ana", "missed_voice_call"), ("Bruno", "text:Call you later"), ("Ana", "document"),
    ("Bruno", "document_pages"), ("Bruno", "text:Got both files, thanks"), ("Ana", "location"),
    ("Bruno", "location_venue"), ("Ana", "text:See you there at 8"), ("Bruno", "gif"), ("Ana", "you_deleted"),
    ("Ana", "contact"), ("Bruno", "text:Who is this?"), ("Ana", "text:My cousin, call him"),
    ("Bruno", "video"), ("Bruno", "missed_video_call"), ("Ana", "audio"), ("Bruno", "edited:On my way"),
    ("Ana", "attached"), ("Ana", "text:Drive safe!"), ("Bruno", "text:Here. Where are you?"),
]
TEXTS = {"Ana": 5, "Bruno": 7}  # per speaker, text messages in SCRIPT
LAST = START + timedelta(minutes=7 * (len(SCRIPT) - 1))
ATTACHED = {"en": "file attached", "de": "Datei angehängt", "es": "archivo adjunto", "fr": "fichier joint",
            "pt": "arquivo anexado", "it": "file allegato", "nl": "bestand bijgevoegd", "ru": "файл прикреплён"}


def _label(lang: str, key: str, i: int = 0) -> str:
    labels = table().languages[lang].get(key) or table().languages["en"][key]
    return labels[i % len(labels)]


def body(lang: str, what: str, ios: bool) -> tuple[str, bool]:
    """(message body, whether iOS marks the whole line with U+200E)."""
    kind, _, arg = what.partition(":")
    maps = "https://maps.google.com/?q=-23.55052,-46.633308"
    if kind == "text":
        return arg, False
    if kind == "edited":
        return f"{arg} {_label(lang, 'edited')}", False
    if kind in ("deleted", "you_deleted", "missed_voice_call", "missed_video_call"):
        return (LRM if ios else "") + _label(lang, kind), False
    if kind == "location":
        return f"{LRM if ios else ''}{_label(lang, 'location')}: {maps}", False
    if kind == "location_venue":
        if ios:
            return f"{LRM}{_label(lang, 'location')}: https://maps.apple.com/?ll=-23.55,-46.63&q=Bar%20do%20Ze", False
        return f"{_label(lang, 'location')}: https://foursquare.com/v/4b5e1f2af964a520e17d29e3", False
    if not ios:  # Android without media: one label for every kind of attachment
        if kind == "attached":
            return f"IMG-20220327-WA0007.jpg ({ATTACHED.get(lang, ATTACHED['en'])})", False
        return _label(lang, "media"), False
    if kind == "attached":
        return f"{LRM}<attached: 00000035-PHOTO-2022-03-27-11-59-01.jpg>", True
    if kind == "document":
        return f"Some file.txt {LRM}{_label(lang, 'document')}", True
    if kind == "document_pages":
        return f"Resume.pdf • {LRM}2 pages {LRM}{_label(lang, 'document')}", True
    return LRM + _label(lang, kind), True


def export(lang: str, ios: bool, script=SCRIPT, start: datetime = START) -> str:
    """The whole export as text (iOS with CRLF line ends, as the phone writes them)."""
    header = DATES[lang][1 if ios else 0]
    lines = []
    for i, (who, what) in enumerate(script):
        t = start + timedelta(minutes=7 * i)
        text, marked = body(lang, what, ios)
        lines.append(f"{LRM if marked else ''}{header(t)}{who}: {text}")
    return ("\r\n" if ios else "\n").join(lines) + "\n"
