"""HTML for the Train tab: the run's progress bar, its evaluation (perplexity before and
after, the voice match with its intervals, the step kept, sample replies side by side),
the blind "Which sounds like them?" comparison and the list of past runs. Speaker names, persona
names, sample replies and errors come from chat exports and training, so every one of
them goes through `esc`."""

from __future__ import annotations

from ui.render import esc, when

STATE_LABELS = {
    "waiting": "Waiting for the model to load",
    "queued": "Starting",
    "running": "Training",
    "cancelling": "Cancelling after this step",
    "cancelled": "Cancelled",
    "failed": "Stopped",
    "finished": "Finished",
}


def duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def who(st: dict) -> str:
    return f"{esc(st['speaker'])} → {esc(st.get('persona_name') or st['speaker'])}"


LOADING_NOTE = ('<div class="tr-empty">The model is loading; training uses it. You can upload an export, fill in '
                "the form and press Train meanwhile: the run starts when the model is ready.</div>")


def waiting_html(waiting: dict) -> str:
    """A run asked for while the model loads (core.runtime.Runtime.waiting_training)."""
    name = f"{esc(waiting['speaker'])} → {esc(waiting.get('persona_name') or waiting['speaker'])}"
    if waiting.get("error"):
        return (f'<div class="tr-run tr-failed" data-state="not-started"><div class="tr-head"><b>{name}</b> '
                f'<span class="tr-state">Not started</span></div><div class="tr-error">{esc(waiting["error"])}</div></div>')
    return (
        f'<div class="tr-run tr-waiting" data-state="waiting">'
        f'<div class="tr-head"><b>{name}</b> <span class="tr-state">{STATE_LABELS["waiting"]}</span></div>'
        '<div class="tr-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0">'
        '<div class="tr-fill" style="width:0%"></div></div>'
        f'<div class="tr-facts">Training starts when the model is ready. Now: {esc(waiting.get("note") or "starting")}</div></div>'
    )


def progress_html(st: dict | None) -> str:
    if st is None:
        return ('<div class="tr-empty">No training yet. Upload a chat export on the left, pick whose voice to '
                "learn and press Train.</div>")
    state = st["state"]
    pct = 100.0 if state == "finished" else round(100 * (st["fraction"] or 0.0), 1)
    facts = []
    if st["total_steps"]:
        facts.append(f"step {st['step']} of {st['total_steps']}")
    if st.get("loss") is not None and state in ("running", "cancelling"):
        facts.append(f"loss {st['loss']:.3f}")
    if st.get("tokens_per_s"):
        facts.append(f"{st['tokens_per_s']:.0f} tokens/s")
    if st.get("eta_s") is not None and state == "running":
        facts.append(f"about {duration(st['eta_s'])} left")
    stage = st.get("stage") or ""
    label = STATE_LABELS.get(state, state)
    if state in ("queued", "running") and stage and stage != "training":
        label += f": {stage}"
    error = f'<div class="tr-error">{esc(st["error"])}</div>' if st.get("error") and state in ("failed",) else ""
    if state == "cancelled":
        error = '<div class="tr-note">No adapter was written. Resume continues from the last checkpoint.</div>'
    error += "".join(f'<div class="tr-warn">{esc(w)}</div>' for w in st.get("warnings") or [])
    return (
        f'<div class="tr-run tr-{esc(state)}" data-state="{esc(state)}">'
        f'<div class="tr-head"><b>{who(st)}</b> <span class="tr-state">{esc(label)}</span></div>'
        f'<div class="tr-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{pct}">'
        f'<div class="tr-fill" style="width:{pct}%"></div></div>'
        f'<div class="tr-facts">{esc(" · ".join(facts))}</div>{error}</div>'
    )


def _num(value, digits=3) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def evaluation_html(st: dict | None) -> str:
    """Held-out loss and perplexity before and after, and the sample replies side by side."""
    if not st:
        return ""
    ev = st.get("evaluation") or {}
    before, after = ev.get("before"), ev.get("after")
    if not before:
        return ""
    rows = [("Base model + card", before)] + ([("With the adapter", after)] if after else [])
    table = "".join(
        f"<tr><td>{label}</td><td>{_num(r.get('loss'))}</td><td>{_num(r.get('perplexity'), 2)}</td></tr>" for label, r in rows
    )
    n = before.get("examples")
    head = (
        f'<div class="tr-eval"><h4>Held-out evaluation</h4><p class="tr-sub">How well the model predicts '
        f"{esc(st['speaker'])}'s real replies in the most recent part of the export ({esc(n)} "
        f"example{'' if n == 1 else 's'}), which training never saw (lower is better).</p>"
        f'<table class="tr-table"><tr><th></th><th>loss</th><th>perplexity</th></tr>{table}</table>'
    )
    if after and before.get("perplexity"):
        head += (f'<p class="tr-verdict">Perplexity {_num(before["perplexity"], 1)} → {_num(after["perplexity"], 1)} '
                 f"({before['perplexity'] / max(after['perplexity'], 1e-9):.1f}× better).</p>")
    kept, steps = ev.get("kept_step"), st.get("step")
    if kept is not None and steps and kept != steps:
        head += (f'<p class="tr-kept">Kept step {esc(kept)} of {esc(steps)}: its held-out loss was the lowest; '
                 "later steps overfit, so their weights were not published.</p>")
    head += voice_html(ev.get("voice"))
    samples = ev.get("samples") or []
    if samples:
        cells = "".join(
            '<div class="tr-sample">'
            f'<div class="tr-prompt"><span>Held-out message</span>{esc(s.get("prompt"))}</div>'
            '<div class="tr-cols">'
            f'<div><span>Real reply</span>{esc(s.get("real"))}</div>'
            f'<div><span>Base model</span>{esc(s.get("base"))}</div>'
            f'<div><span>With the adapter</span>{esc(s.get("adapter"))}</div>'
            "</div></div>"
            for s in samples
        )
        head += f'<h4>Sample replies (same seed)</h4><div class="tr-samples">{cells}</div>'
    return head + "</div>"


def _pct(value) -> str:
    return "?" if value is None else f"{value:.0%}"


def voice_html(voice: dict | None) -> str:
    """The voice match: the share of held-out replies an authorship classifier attributes
    to the speaker, for the base + card, the adapter and the real replies, with 95% ranges;
    the features that moved most; or why it was not judged."""
    if not voice:
        return ""
    if not voice.get("judged"):
        return f'<div class="tr-voice" data-judged="false"><h4>Voice match</h4><p class="tr-sub">{esc(voice.get("reason"))}</p></div>'
    rows = ""
    for key, label in (("base", "Base model + card"), ("adapter", "With the adapter"), ("real", "Their real replies")):
        lo, hi = voice.get(f"voice_match_{key}_ci") or (None, None)
        rows += (f'<tr data-voice="{key}"><td>{label}</td><td>{_pct(voice.get(f"voice_match_{key}"))}</td>'
                 f"<td>{_pct(lo)} to {_pct(hi)}</td></tr>")
    moved = "".join(f"<li>{esc(f.get('text'))}</li>" for f in (voice.get("features") or [])[:5])
    return (
        '<div class="tr-voice" data-judged="true"><h4>Voice match</h4>'
        f'<p class="tr-sub">Share of {esc(voice.get("k"))} held-out replies that a classifier fitted on the training '
        "part of the chat attributes to them (higher is more like them).</p>"
        f'<table class="tr-table"><tr><th></th><th>voice match</th><th>95% range</th></tr>{rows}</table>'
        f'<p class="tr-verdict">{esc(voice.get("summary"))}</p>'
        + (f'<p class="tr-sub">What moved towards their real messages:</p><ul class="tr-moved">{moved}</ul>' if moved else "")
        + f'<p class="tr-sub">{esc(voice.get("caveat") or "")}</p></div>'
    )


def blind_html(blind: dict | None) -> str:
    """The blind comparison: the pair to judge (replies in the shown order, unlabelled),
    or the result once all are judged. Empty when there is nothing to compare."""
    if not blind or not blind.get("total"):
        return ""
    head = ('<div class="tr-blind"><h4>Which sounds like them?</h4><p class="tr-sub">Two replies to a held-out message: '
            "one from the model with the card alone, one with the trained adapter, in random order. Pick the one that "
            "sounds like them, or neither.</p>")
    if blind.get("finished"):
        return head + f'<p class="tr-verdict tr-blind-result">{esc(blind["summary"])}</p></div>'
    cur = blind["current"]
    return (
        head + f'<div class="tr-facts">Pair {blind["done"] + 1} of {blind["total"]}</div>'
        f'<div class="tr-sample" data-pair="{esc(cur["pair"])}"><div class="tr-prompt"><span>Held-out message</span>'
        f'{esc(cur["prompt"])}</div><div class="tr-cols tr-two">'
        f'<div class="tr-reply-a"><span>Reply A</span>{esc(cur["a"])}</div>'
        f'<div class="tr-reply-b"><span>Reply B</span>{esc(cur["b"])}</div></div></div></div>'
    )


def runs_html(runs: list[dict]) -> str:
    if not runs:
        return '<div class="tr-empty">Past runs appear here.</div>'
    rows = []
    for st in runs:
        ev = st.get("evaluation") or {}
        before, after = (ev.get("before") or {}), (ev.get("after") or {})
        result = ""
        if after.get("perplexity") is not None and before.get("perplexity") is not None:
            result = f"perplexity {before['perplexity']:.1f} → {after['perplexity']:.1f}"
        elif st.get("error"):
            result = st["error"][:120]
        steps = f"{st['step']}/{st['total_steps']}" if st["total_steps"] else ""
        rows.append(
            f'<tr data-run="{esc(st["id"])}"><td>{esc(when(st["created"]))}</td><td>{who(st)}</td>'
            f'<td class="tr-s-{esc(st["state"])}">{esc(STATE_LABELS.get(st["state"], st["state"]))}</td>'
            f"<td>{esc(steps)}</td><td>{esc(result)}</td></tr>"
        )
    return ('<table class="tr-table tr-runs"><tr><th>started</th><th>voice → persona</th><th>status</th><th>steps</th>'
            f"<th>result</th></tr>{''.join(rows)}</table>")


def run_choice(st: dict) -> tuple[str, str]:
    """(label, id) for the run picker; the label is plain text (a dropdown shows it as text)."""
    return (f"{when(st['created'])} · {st['speaker']} → {st.get('persona_name') or st['speaker']} · "
            f"{STATE_LABELS.get(st['state'], st['state'])}", st["id"])


def export_summary(info: dict) -> str:
    """Markdown-safe HTML for what an uploaded export holds."""
    speakers = ", ".join(f"{esc(s['name'])} ({s['messages']:,})" for s in info["speakers"][:12])
    more = f" and {len(info['speakers']) - 12} more" if len(info["speakers"]) > 12 else ""
    notes = "".join(f"<li>{esc(n)}</li>" for n in info.get("notes", [])[:6])
    return (
        f'<div class="tr-export"><b>{esc(info.get("format_label") or info["format"])}</b>: '
        f'{info["messages"]:,} messages from {len(info["speakers"])} speakers: {speakers}{more}.'
        + (f"<ul>{notes}</ul>" if notes else "") + "</div>"
    )
