"""The Train tab's HTML: progress, evaluation and the runs list, from status dicts as
`TrainingService.status` returns them. Text from exports and from the model is escaped."""

from ui.training_render import blind_html, duration, evaluation_html, export_summary, progress_html, runs_html, voice_html
from ui.training_view import loss_frame

EVIL = '<img src=x onerror="alert(1)">'


def status(**over):
    st = {
        "id": "r1", "state": "running", "stage": "training", "speaker": EVIL, "persona_name": "Rosa",
        "step": 5, "total_steps": 20, "fraction": 0.25, "loss": 1.23456, "tokens_per_s": 120.4,
        "eta_s": 150, "error": None, "resumable": False, "created": "2026-11-30T09:00:00+00:00",
        "evaluation": {}, "history": {"train": [], "eval": []},
    }
    st.update(over)
    return st


def test_progress_shows_step_loss_speed_and_time_left():
    html = progress_html(status())
    assert 'data-state="running"' in html and "width:25.0%" in html
    assert "step 5 of 20" in html and "loss 1.235" in html and "120 tokens/s" in html and "about 2 min 30 s left" in html
    assert "<img" not in html and "&lt;img" in html


def test_progress_per_state():
    assert "width:100.0%" in progress_html(status(state="finished", fraction=1.0, eta_s=None))
    assert "Starting: loading the model" in progress_html(status(state="queued", stage="loading the model", step=0, total_steps=0))
    failed = progress_html(status(state="failed", error=f"stopped {EVIL}", resumable=True))
    assert "tr-error" in failed and "<img" not in failed
    assert "No adapter was written" in progress_html(status(state="cancelled"))
    assert "No training yet" in progress_html(None)


def test_evaluation_shows_perplexity_before_after_and_escaped_samples():
    ev = {
        "before": {"loss": 3.8, "perplexity": 44.7, "examples": 12},
        "after": {"loss": 0.4, "perplexity": 1.49, "examples": 12},
        "samples": [{"prompt": EVIL, "real": "<script>x()</script>", "base": "b", "adapter": "a"}],
    }
    html = evaluation_html(status(state="finished", evaluation=ev))
    assert "44.70" in html and "1.49" in html and "30.0× better" in html
    assert html.count('class="tr-sample"') == 1
    assert "<script>" not in html and "<img" not in html
    assert evaluation_html(status()) == ""  # nothing measured yet


def test_runs_list_and_export_summary_escape_names():
    runs = runs_html([status(state="finished", evaluation={"before": {"perplexity": 40.0}, "after": {"perplexity": 2.0}}),
                      status(id="r2", state="failed", error="killed")])
    assert runs.count("<tr data-run=") == 2 and "perplexity 40.0 → 2.0" in runs and "killed" in runs
    assert "<img" not in runs
    summary = export_summary({"format": "telegram", "format_label": "Telegram Desktop JSON", "messages": 1234,
                              "notes": [EVIL], "speakers": [{"name": EVIL, "messages": 1000}, {"name": "Tom", "messages": 234}]})
    assert "1,234 messages from 2 speakers" in summary and "Tom (234)" in summary and "<img" not in summary


def test_duration_and_loss_frame():
    assert [duration(s) for s in (None, 42, 150, 7260)] == ["?", "42 s", "2 min 30 s", "2 h 01 min"]
    frame = loss_frame({"train": [[1, 2.0], [2, 1.5]], "eval": [[0, 3.0]]})
    assert list(frame.columns) == ["step", "loss", "series"]
    assert sorted(set(frame["series"])) == ["held-out", "training"] and len(frame) == 3
    early = loss_frame({"train": [], "eval": [[0, 3.0]]})  # before the first step: both series, one without points
    assert sorted(set(early["series"])) == ["held-out", "training"] and early["loss"].isna().sum() == 1


def test_waiting_for_the_model_is_worded_for_the_train_tab():
    from ui.training_render import LOADING_NOTE, waiting_html

    waiting = {"speaker": EVIL, "persona_name": "Rosa", "run": None, "error": None, "cancelled": False,
               "note": "Loading tiny-llama (NF4 4-bit)..."}
    html = waiting_html(waiting)
    assert 'data-state="waiting"' in html and "Waiting for the model to load" in html and "Loading tiny-llama" in html
    assert "width:0%" in html and "<img" not in html
    failed = waiting_html({**waiting, "error": "Training did not start: the model could not be loaded."})
    assert 'data-state="not-started"' in failed and "could not be loaded" in failed
    for text in (html, failed, LOADING_NOTE):  # about training, never about a message
        assert "message" not in text.lower()


def test_voice_match_with_ranges_kept_step_and_warnings_are_shown_escaped():
    voice = {"judged": True, "k": 24, "voice_match_base": 0.125, "voice_match_adapter": 0.5, "voice_match_real": 0.917,
             "voice_match_base_ci": [0.04, 0.31], "voice_match_adapter_ci": [0.31, 0.69], "voice_match_real_ci": [0.74, 0.98],
             "summary": "Voice match: adapter 50%.", "caveat": "Each share comes from only 24 replies",
             "features": [{"text": f"uses '{EVIL}' 4x more"}]}
    ev = {"before": {"loss": 3.8, "perplexity": 44.7, "examples": 12}, "after": {"loss": 2.1, "perplexity": 8.2, "examples": 12},
          "voice": voice, "kept_step": 12}
    html = evaluation_html(status(state="finished", step=20, evaluation=ev))
    assert "Kept step 12 of 20" in html
    assert 'data-voice="adapter"><td>With the adapter</td><td>50%</td><td>31% to 69%</td>' in html
    assert "92%" in html and "12%" in html and "only 24 replies" in html
    assert "<img" not in html and "&lt;img" in html
    assert "Kept step" not in evaluation_html(status(state="finished", step=12, evaluation=ev))
    reason = voice_html({"judged": False, "reason": f"not enough data to judge the voice {EVIL}"})
    assert 'data-judged="false"' in reason and "not enough data" in reason and "<img" not in reason
    thin = progress_html(status(warnings=[f"{EVIL} has only 60 messages: the voice may be thin"]))
    assert "tr-warn" in thin and "voice may be thin" in thin and "<img" not in thin


def test_blind_panel_shows_two_unlabelled_replies_then_the_result():
    cur = {"pair": 2, "prompt": EVIL, "a": "arr", "b": f"hi {EVIL}"}
    html = blind_html({"total": 10, "done": 2, "current": cur, "finished": False, "summary": None})
    assert "Pair 3 of 10" in html and "Reply A" in html and "Reply B" in html
    assert "adapter" not in html.split("</p>", 1)[1]  # which side is which is never on the page
    assert "<img" not in html
    done = blind_html({"total": 10, "done": 10, "current": None, "finished": True, "summary": "You picked the adapter's reply in 7 of 10"})
    assert "tr-blind-result" in done and "7 of 10" in done
    assert blind_html({"total": 0}) == "" and blind_html(None) == ""
