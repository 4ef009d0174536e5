"""Property tests for the WhatsApp line parser: any message, in any supported layout, reads back."""

from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from core.chatimport.whatsapp import DMY, MDY, classify, header_datetime, match_header, parse_lines, split_author

NBSP, NNBSP, LRM = "\u00a0", "\u202f", "\u200e"
ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters=":\n\r\"“”~[]"
                           + "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"),
    min_size=1, max_size=25,
).map(str.strip).filter(lambda s: s and not s[0].isdigit())
bodies = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=80).map(
    str.strip).filter(bool)
times = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31)).map(lambda d: d.replace(microsecond=0))


def render(t: datetime, layout: int, order: str) -> str:
    d1, d2 = (t.day, t.month) if order == DMY else (t.month, t.day)
    h12 = t.hour % 12 or 12
    ampm = "PM" if t.hour >= 12 else "AM"
    if layout == 0:  # Android 24 h, 2-digit year
        return f"{d1}/{d2}/{t.year % 100:02d}, {t.hour:02d}:{t.minute:02d} - "
    if layout == 1:  # Android 12 h with narrow no-break space
        return f"{d1}/{d2}/{t.year % 100:02d}, {h12}:{t.minute:02d}{NNBSP}{ampm} - "
    if layout == 2:  # iOS with seconds and a leading LRM
        return f"{LRM}[{d1:02d}.{d2:02d}.{t.year}, {t.hour:02d}:{t.minute:02d}:{t.second:02d}] "
    if layout == 3:  # time first, dotted time
        return f"[{t.hour:02d}.{t.minute:02d}.{t.second:02d}, {d1}/{d2}/{t.year}] "
    if layout == 4:  # year first (order does not apply)
        return f"{t.year}/{t.month:02d}/{t.day:02d}, {t.hour:02d}:{t.minute:02d}. - "
    if layout == 5:  # Spanish a. m./p. m. with no-break spaces
        return f"{d1}/{d2}/{t.year}, {h12}:{t.minute:02d}{NBSP}{ampm[0].lower()}.{NBSP}m. - "
    # Arabic-Indic digits, right-to-left marks
    return (f"\u200f{d1}\u200f/{d2}\u200f/{t.year} {h12}:{t.minute:02d} {'م' if t.hour >= 12 else 'ص'} - ").translate(ARABIC)


def expected_time(t: datetime, layout: int) -> datetime:
    return t if layout in (2, 3) else t.replace(second=0)


@settings(max_examples=300, deadline=None)
@given(t=times, layout=st.integers(0, 6), order=st.sampled_from([DMY, MDY]), name=names, body=bodies)
def test_header_round_trip(t, layout, order, name, body):
    line = render(t, layout, order) + f"{name}: {body}"
    m = match_header(line)
    assert m is not None, line
    assert header_datetime(m, order) == expected_time(t, layout)
    author, text = split_author(m.group("body"), set())
    assert author == name
    assert text == body


@settings(max_examples=150, deadline=None)
@given(t=times, order=st.sampled_from([DMY, MDY]), layout=st.integers(0, 6),
       msgs=st.lists(st.tuples(names, st.lists(bodies, min_size=1, max_size=3)), min_size=1, max_size=8))
def test_multiline_messages_round_trip(t, order, layout, msgs):
    lines = []
    for name, parts in msgs:
        lines.append(render(t, layout, order) + f"{name}: {parts[0]}")
        lines.extend(parts[1:])
    out = list(parse_lines(lines, order))
    # Every message comes back (a continuation line may itself look like a header only if generated so).
    if all(match_header(p) is None for _, parts in msgs for p in parts[1:]):
        assert len(out) == len(msgs)
        for m, (name, parts) in zip(out, msgs):
            assert m.speaker == name or m.kind == "system"
            assert m.time == expected_time(t, layout)
            kind, text, _, _ = classify("\n".join(parts), True)
            assert (m.kind, m.text) == (kind, text)


@given(st.text(max_size=200))
def test_parser_never_crashes(text):
    for order in (DMY, MDY):
        list(parse_lines(text.splitlines(), order))


_TOKENS = ["<Media omitted>", "image omitted", "\u200e", "POLL:", "OPTION: a", "null", "This message was deleted",
           "view once", "(file attached)", "IMG-1.jpg", "<This message was edited>", "location: https://maps.x",
           "hello", "omitted", "promise", "\n", " ", "Missed voice call", "<attached: 1.jpg>", ">", "<", "é", "👍🏽",
           "CV.pdf", "•", "2 pages", "\u200edocument omitted", "Poloha:", "https://maps.apple.com/?ll=1,2",
           "<Média vynechány>", "Ujumbe huu ulifutwa", ".", "Llamada perdida"]


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=6), has_author=st.booleans())
def test_fast_path_agrees_with_every_rule(parts, has_author):
    from core.chatimport.placeholders import classify_full

    text = " ".join(parts)
    assert classify(text, has_author) == classify_full(text, has_author)
