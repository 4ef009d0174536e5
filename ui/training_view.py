"""The Train tab: upload a chat export, pick whose voice to learn, train a persona, and
watch the run (progress bar with ETA, live loss plot, cancel / resume, the held-out
evaluation and voice match, a button to chat with the result, the list of past runs),
then judge the result blind ("Which sounds like them?": two replies, A and B, and
"Neither"; the picks are stored with the run).

Training itself runs in a worker process (`core.training`); this view only starts it and
reads its progress from the store on a timer, so closing the page never stops a run.
Pressed while the model loads, Train queues the run (core.runtime): it starts when the
model is ready, and the progress area says that it waits.
"""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from core.errors import ChorusError
from core.training.config import ADVANCED, TrainConfig
from core.training.service import inspect_export
from storage.training_runs import ACTIVE
from ui import notify
from ui.cards_view import NEW  # the same "a new persona" choice as the persona editor's
from ui.training_render import (LOADING_NOTE, blind_html, evaluation_html, export_summary, progress_html, run_choice,
                                runs_html, waiting_html)

POLL_S = 2.0
AUTO_FIELDS = ("max_steps", "max_seq_len", "learning_rate")  # 0 in the form: chosen from the data or the model's size

LABELS = {
    "max_steps": "Steps (0 = choose from the data)",
    "epochs": "Epochs (when steps are chosen from the data)",
    "rank": "LoRA rank",
    "alpha": "LoRA alpha",
    "learning_rate": "Learning rate (0 = by the model's size)",
    "batch_size": "Batch size",
    "max_seq_len": "Sequence length in tokens (0 = choose from the data)",
    "dropout": "LoRA dropout",
    "val_fraction": "Held-out share (the most recent conversations)",
    "scrub": "Replace phone numbers, e-mail addresses and URLs before training",
    "seed": "Seed",
}


# Fields typed float (also when their default is None, "automatic"): the form keeps their decimals.
FLOAT_FIELDS = {f.name for f in fields(TrainConfig) if "float" in str(f.type)}


def _defaults() -> dict:
    base = TrainConfig()
    return {f.name: getattr(base, f.name) for f in fields(TrainConfig) if f.name in ADVANCED}


def new_state() -> dict:
    """Per browser tab: the run shown, and what was last sent to the page (to skip redraws)."""
    return {"run": None, "waiting": None, "plot": None, "eval": None, "runs": None, "run_state": None,
            "blind": None, "blind_pair": None}


class TrainingView:
    def __init__(self, runtime, chat_view, personas_view):
        self.runtime = runtime
        self.store = runtime.store
        self.chat = chat_view
        self.personas = personas_view

    # the form ----------------------------------------------------------------------

    def targets(self) -> list[tuple[str, str]]:
        return [("A new persona", NEW)] + [(f"{p['name']} (new adapter version)", p["id"]) for p in self.store.personas.list()]

    def inspect(self, upload, progress=gr.Progress()):
        """Read the uploaded export: its format and speakers, and a suggested card for each."""
        empty = ({}, "", gr.update(choices=[], value=None), "", "")
        if not upload:
            return empty
        path = getattr(upload, "name", upload)
        progress(0, desc="Reading the export")

        def report(done, total):
            if total:
                progress(done / total, desc="Reading the export")

        try:
            info = inspect_export(path, report)
        except ChorusError as exc:
            raise notify.error(f"This export cannot be used: {exc}") from None
        if not info["speakers"]:
            raise notify.error("The export holds no messages with a sender; nobody's voice can be learned from it.")
        info["path"] = str(path)
        choices = [(f"{s['name']} ({s['messages']:,} messages)", s["name"]) for s in info["speakers"]]
        first = info["speakers"][0]
        return info, export_summary(info), gr.update(choices=choices, value=first["name"]), first["name"], first["card"]["greeting"]

    def speaker_card(self, info, speaker):
        for s in (info or {}).get("speakers", []):
            if s["name"] == speaker:
                return s["card"]["name"], s["card"]["greeting"]
        return gr.skip(), gr.skip()

    def start(self, info, speaker, target, name, greeting, consent, tstate, *advanced):
        if not info or not info.get("path"):
            raise notify.error("Upload a chat export first.")
        if not speaker:
            raise notify.error("Pick whose voice to learn.")
        if not consent:
            raise notify.error("Tick the consent box: you confirm that you may use this person's messages.")
        config = dict(zip(ADVANCED, advanced))
        for key in AUTO_FIELDS:
            if not config.get(key):
                config[key] = None
        for key in ("max_steps", "rank", "batch_size", "max_seq_len", "seed"):
            if config.get(key) is not None:
                config[key] = int(config[key])
        persona_id = None if target in (None, NEW) else target
        thin = next((s.get("thin") for s in info.get("speakers", []) if s["name"] == speaker), None)
        if thin:  # before the run starts; the run's progress keeps saying it
            notify.warning(thin)
        card = {"name": (name or speaker).strip(), "greeting": (greeting or "").strip()}
        try:
            started = self.runtime.start_training(export_path=info["path"], speaker=speaker, persona_name=card["name"],
                                                  persona_id=persona_id, card=card, config=config, consent=True)
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        if "waiting" in started:
            notify.info(f"The model is still loading; training {speaker}'s voice starts as soon as it is ready. "
                        "You can leave this page.")
            return {**new_state(), "waiting": started["waiting"]}
        notify.info(f"Training {speaker}'s voice. Chat stays available meanwhile; you can leave this page.")
        return {**new_state(), "run": started["run"]}

    # the run -------------------------------------------------------------------------

    def _service(self):
        if not self.runtime.ready:
            return None
        try:
            return self.runtime.training
        except ChorusError:  # ready for chat a moment before training
            return None

    def _waiting(self, tstate: dict) -> dict | None:
        """The request queued while the model loads, until it becomes a run."""
        token = tstate.get("waiting")
        w = self.runtime.waiting_training(token) if token else None
        if w and w["run"]:
            tstate.update(waiting=None, run=w["run"])
            return None
        if w and w["error"] and not tstate.get("waiting_said"):
            notify.warning(w["error"])
            tstate["waiting_said"] = True
        return w

    def _status(self, run_id: str | None) -> dict | None:
        svc = self._service()
        if svc is None or run_id is None:
            return None
        try:
            return svc.status(run_id)
        except ChorusError:
            return None

    def refresh(self, tstate, state):
        """Everything about the shown run; parts that did not change are skipped (no flicker)."""
        tstate = dict(tstate or new_state())
        waiting = self._waiting(tstate)
        svc = self._service()
        runs = svc.runs(30) if svc else []
        if tstate.get("run") is None and runs and not waiting:
            active = [r for r in runs if r["state"] in ACTIVE]
            tstate["run"] = (active or runs)[0]["id"]
        st = self._status(tstate.get("run"))
        hist = (st or {}).get("history") or {"train": [], "eval": []}
        plot_key = (st or {}).get("id"), len(hist["train"]), len(hist["eval"])
        ev = evaluation_html(st)
        runs_key = [(r["id"], r["state"], r["step"]) for r in runs]
        finished_now = bool(st) and st["state"] == "finished" and tstate.get("run_state") not in (None, "finished") \
            and tstate.get("run_state_of") == st["id"]

        plot = gr.skip() if plot_key == tstate.get("plot") else (loss_frame(hist) if plot_key[1] or plot_key[2] else None)
        evaluation = gr.skip() if ev == tstate.get("eval") else ev
        runs_out = gr.skip() if runs_key == tstate.get("runs") else runs_html(runs)
        pick = gr.skip() if runs_key == tstate.get("runs") else gr.update(choices=[run_choice(r) for r in runs], value=tstate.get("run"))
        tstate.update(plot=plot_key, eval=ev, runs=runs_key, run_state=(st or {}).get("state"), run_state_of=(st or {}).get("id"))

        state_now = (st or {}).get("state")
        chat_label = f"Chat with {st.get('persona_name') or st['speaker']}" if st else "Chat"
        picker = gr.skip()
        if finished_now:
            notify.info(f"{st.get('persona_name') or st['speaker']} is trained and ready to chat.")
            picker = self.chat.picker(self.chat.fix_state(state))
        progress = progress_html(st)
        if waiting and not waiting["cancelled"]:
            progress = waiting_html(waiting)
        elif svc is None:
            progress = LOADING_NOTE
        waits = bool(waiting) and not (waiting["error"] or waiting["cancelled"])
        blind, blind_buttons = self._blind_out(tstate, svc, st)
        return (
            tstate,
            progress,
            plot,
            evaluation,
            gr.update(visible=state_now in ("queued", "running") or waits),
            gr.update(visible=bool(st and st["resumable"])),
            gr.update(visible=state_now == "finished", value=chat_label),
            runs_out,
            pick,
            picker,
            blind,
            blind_buttons,
        )

    def _blind_out(self, tstate: dict, svc, st: dict | None, blind: dict | None = None):
        """The blind panel and its buttons' visibility; remembers the pair shown, so that a
        click always judges the pair the user read."""
        if blind is None and svc is not None and st and st["state"] == "finished":
            try:
                blind = svc.blind(st["id"])
            except ChorusError:
                blind = None
        html = blind_html(blind)
        current = (blind or {}).get("current")
        tstate["blind_pair"] = current["pair"] if current else None
        out = gr.skip() if html == tstate.get("blind") else html
        tstate["blind"] = html
        return out, gr.update(visible=bool(current))

    def blind_pick(self, side: str, tstate):
        """A click on Reply A, Reply B or Neither."""
        tstate = dict(tstate or new_state())
        svc = self._service()
        if svc is None or tstate.get("run") is None or tstate.get("blind_pair") is None:
            raise notify.error("There is no pair to judge.")
        try:
            blind = svc.blind_pick(tstate["run"], tstate["blind_pair"], side)
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        html, buttons = self._blind_out(tstate, svc, None, blind)
        return tstate, html, buttons

    def cancel(self, tstate):
        if (tstate or {}).get("waiting"):
            self.runtime.cancel_waiting(tstate["waiting"])
            notify.info("Cancelled: this run will not start when the model is ready.")
            return tstate
        try:
            self.runtime.training.cancel(tstate["run"])
        except (ChorusError, KeyError, TypeError) as exc:
            raise notify.error(f"Nothing to cancel: {exc}") from None
        notify.info("Cancelling after the current step. No adapter will be written.")
        return tstate

    def resume(self, tstate):
        try:
            self.runtime.training.resume(tstate["run"])
        except (KeyError, TypeError):
            raise notify.error("Pick a run to resume.") from None
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        notify.info("Resuming from the last checkpoint.")
        return tstate

    def show(self, run_id, tstate):
        if not run_id or run_id == (tstate or {}).get("run"):
            return gr.skip()
        return {**new_state(), "run": run_id}

    def chat_with(self, tstate, state, request: gr.Request):
        st = self._status((tstate or {}).get("run"))
        if not st or st["state"] != "finished" or not st.get("adapter_id"):
            raise notify.error("This run has not produced a persona yet.")
        try:
            persona_id = self.store.adapters.get(st["adapter_id"])["persona_id"]
        except ChorusError as exc:
            raise notify.error(str(exc)) from None
        return self.personas.start_chat(persona_id, state, request)

    # layout ------------------------------------------------------------------------

    def build(self):
        c = SimpleNamespace()
        defaults = _defaults()
        c.info = gr.State({})
        c.tstate = gr.State(new_state())
        with gr.Row():
            with gr.Column(scale=2, min_width=300, elem_id="tr-form"):
                c.export = gr.File(label="Chat export: WhatsApp .txt/.zip, Telegram, Discord, Messenger, Signal, "
                                         "iMessage, ChatGPT/ShareGPT/SillyTavern JSON(L) or a plain transcript",
                                   file_count="single", elem_id="tr-export")
                c.summary = gr.HTML(elem_id="tr-summary")
                c.speaker = gr.Dropdown(label="Whose voice to learn", choices=[], elem_id="tr-speaker")
                c.target = gr.Dropdown(label="Train into", choices=self.targets(), value=NEW, elem_id="tr-target")
                c.name = gr.Textbox(label="Persona name", max_lines=1, elem_id="tr-name")
                c.greeting = gr.Textbox(label="Greeting (taken from their messages; edit freely)", lines=2,
                                        elem_id="tr-greeting")
                c.consent = gr.Checkbox(label="I may use this person's messages to train a voice: they are mine, or "
                                              "they agreed. Nothing leaves this machine.", elem_id="tr-consent")
                with gr.Accordion("Advanced settings", open=False, elem_id="tr-advanced"):
                    c.advanced = []
                    for key in ADVANCED:
                        value = defaults[key]
                        if isinstance(value, bool):
                            comp = gr.Checkbox(value=value, label=LABELS[key], elem_id=f"tr-{key}")
                        else:
                            comp = gr.Number(value=value if value is not None else 0, label=LABELS[key],
                                             elem_id=f"tr-{key}", precision=None if key in FLOAT_FIELDS else 0)
                        c.advanced.append(comp)
                c.train = gr.Button("Train", variant="primary", elem_id="tr-train")
            with gr.Column(scale=3, elem_id="tr-monitor"):
                c.progress = gr.HTML(progress_html(None), elem_id="tr-progress")
                with gr.Row():
                    c.cancel = gr.Button("Cancel", variant="stop", size="sm", visible=False, elem_id="tr-cancel")
                    c.resume = gr.Button("Resume from the last checkpoint", size="sm", visible=False, elem_id="tr-resume")
                    c.chat = gr.Button("Chat", variant="primary", size="sm", visible=False, elem_id="tr-chat")
                # Starts without a value: a plot first drawn from an empty frame (Gradio 6.31)
                # never draws the lines of later updates.
                c.plot = gr.LinePlot(None, x="step", y="loss", color="series",
                                     title="Loss (training and held-out)", height=260, elem_id="tr-plot",
                                     color_map={"training": "#6366f1", "held-out": "#f59e0b"})
                c.evaluation = gr.HTML(elem_id="tr-eval")
                c.blind = gr.HTML(elem_id="tr-blind")
                with gr.Row(visible=False, elem_id="tr-blind-buttons") as c.blind_buttons:
                    c.blind_a = gr.Button("Reply A", size="sm", elem_id="tr-blind-a")
                    c.blind_b = gr.Button("Reply B", size="sm", elem_id="tr-blind-b")
                    c.blind_neither = gr.Button("Neither", size="sm", elem_id="tr-blind-neither")
                gr.Markdown("**Past runs**")
                c.pick = gr.Dropdown(label="Show run", choices=[], elem_id="tr-pick")
                c.runs = gr.HTML(elem_id="tr-runs")
        c.timer = gr.Timer(POLL_S)
        return c

    def wire(self, c, state, tabs, chat, convlist):
        view = [c.tstate, c.progress, c.plot, c.evaluation, c.cancel, c.resume, c.chat, c.runs, c.pick, chat.picker_html,
                c.blind, c.blind_buttons]
        c.export.upload(self.inspect, [c.export], [c.info, c.summary, c.speaker, c.name, c.greeting])
        c.export.clear(lambda: ({}, "", gr.update(choices=[], value=None), "", ""), None,
                       [c.info, c.summary, c.speaker, c.name, c.greeting])
        c.speaker.input(self.speaker_card, [c.info, c.speaker], [c.name, c.greeting])
        c.train.click(self.start, [c.info, c.speaker, c.target, c.name, c.greeting, c.consent, c.tstate, *c.advanced],
                      [c.tstate]).success(self.refresh, [c.tstate, state], view, show_progress="hidden")
        c.cancel.click(self.cancel, [c.tstate], [c.tstate]).success(self.refresh, [c.tstate, state], view,
                                                                     show_progress="hidden")
        c.resume.click(self.resume, [c.tstate], [c.tstate]).success(self.refresh, [c.tstate, state], view,
                                                                     show_progress="hidden")
        c.pick.input(self.show, [c.pick, c.tstate], [c.tstate]).then(self.refresh, [c.tstate, state], view,
                                                                     show_progress="hidden")
        c.chat.click(self.chat_with, [c.tstate, state], [state, tabs, chat.transcript, chat.picker_html, chat.active, convlist])
        for button, side in ((c.blind_a, "a"), (c.blind_b, "b"), (c.blind_neither, "neither")):
            # one queue with the timer's refresh: both write tstate's "pair shown"
            button.click(lambda t, side=side: self.blind_pick(side, t), [c.tstate], [c.tstate, c.blind, c.blind_buttons],
                         show_progress="hidden", concurrency_id="tr-view")
        # queued (unlike the status line's timer) so that the "trained and ready" toast reaches the page
        c.timer.tick(self.refresh, [c.tstate, state], view, show_progress="hidden", concurrency_id="tr-view")
        return view


def loss_frame(history: dict) -> pd.DataFrame:
    """Rows of (step, loss, series) for the plot: the training loss and the held-out loss.

    Both series are always present (a NaN row stands in for one without points yet): the
    plot fixes its colours and legend from the series of the first data it draws."""
    rows = []
    for key, series in (("train", "training"), ("eval", "held-out")):
        points = history.get(key) or [(0, float("nan"))]
        rows += [(s, loss, series) for s, loss in points]
    # Explicit dtypes: columns of an empty frame are "object", which the plot reads as categories.
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"])
    return frame.astype({"step": "int64", "loss": "float64", "series": "str"})
