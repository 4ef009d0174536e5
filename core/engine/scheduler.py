"""The queue in front of the model: requests wait here, one decode thread runs them in batches.

Every reply (a tab, an API client, a member of a group) is a `Request`. The decode thread
admits waiting requests into the running batch at step boundaries (continuous batching:
they are prefilled on their own and joined, core/engine/decode.py; an idle engine waits a
few ms for requests sent together, which then share one prefill), decodes one token for
every row per step, and lets a row leave as soon as it ends (end of sequence, a stop
string, max tokens, its stop event) without disturbing the others.

Admission: each row pins its adapter's slot from admission to leaving. A request whose
adapter cannot get a slot, because every slot is pinned by running rows, waits (it is
not an error) until a row leaves; while one waits so, no request that would pin another
free slot is admitted ahead of it. The batch is capped by `max_batch` rows and by a
memory budget for the key/value cache: bytes per token per row (from the model config)
times the longest row's prompt plus new tokens, times the rows. A request alone is always
admitted, even over the budget, or it would never run.

The thread runs only while there is work, and ends when the queue and the batch are
empty (an engine that is dropped leaves no thread behind). An exception while decoding
fails the rows of that batch, each with a ChorusError carrying the reason; the thread
goes on with the queue.
"""

from __future__ import annotations

import queue
import threading
import time

import torch

from core.engine.decode import Batch, Decoder
from core.engine.sampling import RowSampler, TextGate, choose
from core.errors import ChorusError

_END = object()
# An idle engine that gets a request waits this long at most for others sent with it (the
# members of a group chat started one after another, a burst of API clients), and stops
# waiting when none came for QUIET: prefilled together, they skip a separate prefill and
# the steps of a batch of one (a group of 4: 0.1 s of 4.4).
LINGER = 0.01
QUIET = 0.002


class SlotsBusy(ChorusError):
    """Every adapter slot is pinned by a row being decoded (a request then waits)."""


class Request:
    """One reply: its prompt, adapter, settings, and the pieces it hands its consumer."""

    def __init__(self, ids, adapter, settings, stop, result, group=None):
        self.ids = list(ids)
        self.adapter = adapter
        self.settings = settings
        self.stop = stop  # threading.Event: the row ends after the current token
        self.result = result  # dict filled when the row ends, or None
        self.group = group  # requests submitted together, admitted together
        self.out: queue.Queue = queue.Queue()
        self.slot: str | None = None
        self.pinned = False
        self.tokens: list[int] = []
        self.sampler = None
        self.gate = None
        self.t0 = 0.0
        self.batch = 0  # the largest batch this row was decoded in
        self.finish = None
        self.seen = None  # (1, prompt + max new) the ids so far, filled as tokens come
        self.trace: list | None = None  # set to a list: each step's fp32 logits land there (tests)

    def cost(self) -> int:
        return len(self.ids) + self.settings.max_new_tokens


class Scheduler:
    def __init__(self, engine, *, max_batch: int = 8, kv_budget_bytes: int = 512 * 2**20):
        if max_batch < 1:
            raise ChorusError("The batch size must be at least 1.")
        self.engine = engine
        self.max_batch = max_batch
        self.kv_budget = kv_budget_bytes
        emb = engine.model.get_input_embeddings() if hasattr(engine.model, "get_input_embeddings") else None
        width = emb.weight.element_size() if emb is not None else 2  # the cache is kept in the compute dtype
        self.token_bytes = kv_bytes_per_token(engine.model.config, width)
        self.decoder = Decoder(engine)
        self._cond = threading.Condition()
        self._waiting: list[Request] = []
        self._running = 0
        self._thread: threading.Thread | None = None
        self.counts = (0, 0)  # (waiting, running), rebound whole: read without a lock
        eos = engine.model.generation_config.eos_token_id if getattr(engine.model, "generation_config", None) else None
        if eos is None:
            eos = engine.tokenizer.eos_token_id
        self.eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        self.pad = engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else (self.eos or (0,))[0]

    # submitting ----------------------------------------------------------------

    def submit(self, requests: list[Request]) -> None:
        with self._cond:
            self._waiting.extend(requests)
            self._count()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chorus-decode", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until no row runs or waits; False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._waiting and not self._running and self._thread is None, timeout)

    def wait_for_leave(self, timeout: float) -> bool:
        """If rows are being decoded or admitted (and so may hold slots), wait until one
        leaves or `timeout` passes and return True; False at once when the decode thread
        is not running. (While the first rows are prefilled they hold their slots and are
        not counted as running yet: a request then must wait, not fail.)"""
        with self._cond:
            if not self._running and self._thread is None:
                return False
            self._cond.wait(timeout)
            return True

    def _count(self) -> None:
        self.counts = (len(self._waiting), self._running)

    # the decode thread -----------------------------------------------------------

    def _run(self) -> None:
        batch: Batch | None = None
        try:
            while True:
                batch = self._admit(batch)
                if batch is None:
                    with self._cond:
                        if not self._waiting:
                            self._thread = None
                            self._running = 0
                            self._count()
                            self._cond.notify_all()
                            return
                        # Waiting requests that cannot be admitted now (slots): let time pass.
                        self._cond.wait(0.05)
                    continue
                try:
                    batch = self._step(batch)
                except Exception as exc:  # this batch's rows fail; the queue goes on
                    rows, batch = batch.rows, None
                    self._fail(rows, exc)
        except BaseException as exc:  # never leave a consumer hanging
            with self._cond:
                rows = (batch.rows if batch else []) + self._waiting
                self._waiting = []
                self._thread = None
                self._running = 0
                self._count()
                self._cond.notify_all()
            self._fail(rows, exc)

    def _admit(self, batch: Batch | None) -> Batch | None:
        """Take the waiting requests that fit into the batch (prefilled, joined)."""
        if batch is not None and not batch.joinable:
            return batch
        if batch is None:
            self._linger()
        rows = list(batch.rows) if batch is not None else []
        with self._cond:
            waiting = list(self._waiting)
        if not waiting:
            return batch
        taken, failed = self._choose(rows, waiting)
        with self._cond:
            gone = set(map(id, taken + failed))
            self._waiting = [r for r in self._waiting if id(r) not in gone]
            self._count()
        for req, exc in failed:
            self._fail([req], exc)
        if not taken:
            return batch
        t0 = time.perf_counter()  # a reply's seconds count its prefill, as they always did
        try:
            with self.engine._lock:
                new, logits = self.decoder.prefill(taken, [r.ids for r in taken], self.pad)
        except BaseException as exc:
            self._release(taken)
            self._fail(taken, exc)
            return batch
        for r in taken:
            r.t0 = t0
            r.gate = TextGate(self.engine.tokenizer, r.settings.stop)
            r.sampler = RowSampler(r.settings, self.eos, device=new.mask.device)
            # The row's prompt and tokens, filled as they come (the repetition penalty reads them).
            r.seen = torch.zeros(1, len(r.ids) + r.settings.max_new_tokens, dtype=torch.long)
            r.seen[0, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        try:
            if batch is None:
                batch = new
            else:
                with self.engine._lock:
                    batch.join(new)
            with self._cond:
                self._running = len(batch.rows)
                self._count()
            self._choose_tokens(batch, logits, taken)
        except Exception as exc:
            rows = list({id(r): r for r in (batch.rows if batch else []) + taken}.values())
            self._fail(rows, exc)
            return None
        return self._leave(batch)

    def _linger(self) -> None:
        """Wait for more requests while they keep coming, LINGER at most (see there)."""
        deadline = time.monotonic() + LINGER
        with self._cond:
            count = len(self._waiting)
            while count and time.monotonic() < deadline:
                self._cond.wait(QUIET)
                if len(self._waiting) == count:
                    return
                count = len(self._waiting)

    def _choose(self, rows: list[Request], waiting: list[Request]):
        """The requests to admit now, each with its slot pinned; and those that failed."""
        taken, failed = [], []
        width = max((r.cost() for r in rows), default=0)
        count = len(rows)
        blocked = False  # an earlier request waits for a slot: admit nobody who takes another
        seen_groups = set()
        for req in waiting:
            if req.group is not None:
                if id(req.group) in seen_groups:
                    continue
                seen_groups.add(id(req.group))
                unit = req.group
            else:
                unit = [req]
            w = max(width, max(r.cost() for r in unit))
            n = count + len(unit)
            if count and (n > self.max_batch or n * w * self.token_bytes > self.kv_budget):
                break  # first come, first served: the rest waits for the next boundary
            pinned, error = self._pin(unit, only_pinned=blocked)
            if error is not None:
                if isinstance(error, SlotsBusy):
                    blocked = True
                    continue
                failed.extend((r, error) for r in unit)
                continue
            taken.extend(pinned)
            width, count = w, n
        return taken, failed

    def _pin(self, unit: list[Request], only_pinned: bool):
        """Pin every row's slot (all or none). only_pinned: only slots rows already hold."""
        engine = self.engine
        done = []
        try:
            for req in unit:
                if req.adapter is None:
                    req.slot = None
                    done.append(req)
                    continue
                with engine._lock:
                    slot = engine._resident_for(req.adapter)
                    if only_pinned and (slot is None or engine._resident[slot].pins == 0):
                        raise SlotsBusy("waiting for a slot")
                    full = len(engine._resident) >= engine.max_resident
                    if slot is None and full and all(r.pins for r in engine._resident.values()):
                        raise SlotsBusy("waiting for a slot")  # known before reading the file
                req.slot = engine.ensure_adapter(req.adapter, pin=True)
                req.pinned = True
                done.append(req)
        except BaseException as exc:
            self._release(done)
            return [], exc
        return done, None

    def _release(self, rows: list[Request]) -> None:
        names = [r.slot for r in rows if r.pinned and r.slot is not None]
        for r in rows:
            r.pinned = False
        if names:
            self.engine.unpin(names)

    def _step(self, batch: Batch) -> Batch | None:
        with self.engine._lock:
            logits = self.decoder.step(batch, [r.tokens[-1] for r in batch.rows])
        self._choose_tokens(batch, logits, batch.rows)
        return self._leave(batch)

    def _choose_tokens(self, batch: Batch, logits, rows: list[Request]) -> None:
        """Row i of `rows` takes its next token from row i of `logits`."""
        size = len(batch.rows)
        live = []
        for i, r in enumerate(rows):
            r.batch = max(r.batch, size)
            if r.finish is not None:
                continue
            if r.stop.is_set():
                r.finish = "stopped"
                continue
            if r.trace is not None:
                r.trace.append(logits[i].clone())
            live.append(i)
        if not live:
            return
        seen = [rows[i].seen[:, : len(rows[i].ids) + len(rows[i].tokens)] for i in live]
        tokens = choose([rows[i].sampler for i in live], seen, logits[live], [len(rows[i].tokens) for i in live])
        for i, token in zip(live, tokens):
            r = rows[i]
            r.seen[0, len(r.ids) + len(r.tokens)] = token
            r.tokens.append(token)
            if token in self.eos:
                r.finish = "stop"
                continue
            piece = r.gate.add(token)
            if piece:
                r.out.put(piece)
            if r.gate.hit:
                r.finish = "stop"
            elif len(r.tokens) >= r.settings.max_new_tokens:
                r.finish = "length"
            elif r.stop.is_set():
                r.finish = "stopped"

    def _leave(self, batch: Batch) -> Batch | None:
        done = [r for r in batch.rows if r.finish is not None]
        if not done:
            return batch
        keep = [i for i, r in enumerate(batch.rows) if r.finish is None]
        with self.engine._lock:
            if keep:
                batch.keep(keep)
            else:
                self.decoder.close()
        for r in done:
            self._finish(r)
        with self._cond:
            self._running = len(keep)
            self._count()
            self._cond.notify_all()  # slots may be free: ensure_adapter callers wait on this
        return batch if keep else None

    def _finish(self, r: Request) -> None:
        self._release([r])
        elapsed = time.perf_counter() - r.t0
        tokens = len(r.tokens)
        stats = {
            "tokens": tokens,
            "seconds": round(elapsed, 3),
            "tok_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
            "stopped": r.finish == "stopped",
            "prompt_tokens": len(r.ids),
            "finish_reason": r.finish,
            "batch": r.batch,
            "lean_rows": self.decoder.lean if r.batch > 1 else None,
        }
        self.engine._record(stats)
        if r.result is not None:
            r.result.update(stats)
        tail = r.gate.flush() if r.gate is not None else ""
        if tail:
            r.out.put(tail)
        r.out.put(_END)

    def _fail(self, rows: list[Request], exc: BaseException) -> None:
        self._release(rows)
        try:
            with self.engine._lock:
                self.decoder.close()
        except BaseException:
            pass
        if not isinstance(exc, ChorusError):
            exc = ChorusError(f"Generation failed: {type(exc).__name__}: {exc}")
        for r in rows:
            r.out.put(exc)

    # consuming -------------------------------------------------------------------

    @staticmethod
    def pieces(req: Request):
        """Yield the row's text pieces; raise its error. Closing this generator stops the row."""
        try:
            while True:
                item = req.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            req.stop.set()


def kv_bytes_per_token(config, width: int = 2) -> int:
    """Bytes of key/value cache one token of one row takes (all layers, keys and values),
    `width` bytes a value (the compute dtype's: 2 for bf16, 4 for fp32)."""
    text = getattr(config, "text_config", None) or config
    layers = int(getattr(text, "num_hidden_layers", 1))
    heads = int(getattr(text, "num_attention_heads", 1))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * layers * kv_heads * head_dim * width
