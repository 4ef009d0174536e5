"""Every reply goes through the scheduler and is decoded in batches with per-row adapters
and per-row sampling: a row gives what it gives alone, rows join and leave at step
boundaries, stop strings and lengths end rows, slots are pinned, the memory budget caps
the batch, and a failure fails only its batch.

Tolerance: a row inside a batch runs other kernel shapes than alone (the 4-bit matmuls and
the head see several rows). Logits must stay within tests/rounding.py's bound (a few bf16
steps at the largest logit) and greedy tokens must be equal. A sampled row draws from its
own generator, so while its logits are the same bits its tokens are the same; where a
kernel gives other bits (within the bound), a near-tie may flip a sample, so the sampled
comparison checks tokens up to the first step whose logits differ at all (on this CPU the
kernels give the same bits, and the whole reply is compared)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from core.engine import AdapterRef, Engine, GenerationSettings
from core.engine.scheduler import Request, Scheduler
from core.errors import ChorusError
from core.model_source import ModelSource
from tests.rounding import assert_within_bf16_rounding, near_tie, stable_steps

PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2]
PROMPTS = [PROMPT, PROMPT[:5], PROMPT[2:], PROMPT[1:7]]


def greedy(n=12):
    return GenerationSettings(temperature=0, max_new_tokens=n, seed=7)


def sampled(seed, n=16, **kw):
    return GenerationSettings(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=n, seed=seed, **kw)


@pytest.fixture
def make_engine(tiny_model_dir):
    from core.logs import quiet_libraries

    quiet_libraries()

    def make(**options):
        return Engine.load(ModelSource("tiny-llama", tiny_model_dir), **options)

    return make


@pytest.fixture(scope="module")
def eight(tiny_model_dir, tmp_path_factory):
    from core.synthetic import make_random_adapter

    root = tmp_path_factory.mktemp("eight")
    return [AdapterRef(f"p{i}", make_random_adapter(tiny_model_dir, root / f"p{i}", seed=200 + i, rank=4)) for i in range(8)]


def refs(tiny_adapters):
    return [AdapterRef("a", tiny_adapters["a"]), AdapterRef("b", tiny_adapters["b"]), None, AdapterRef("c", tiny_adapters["c"])]


def run_request(engine, ids, adapter, settings, trace=False, stop=None):
    """Submit one request straight to the scheduler; returns it once it ended (tokens, trace)."""
    req = Request(ids, adapter, settings, stop or threading.Event(), {})
    if trace:
        req.trace = []
    if adapter is not None:
        engine.ensure_adapter(adapter)
    engine.scheduler.submit([req])
    req.text = "".join(Scheduler.pieces(req))
    return req


class held:
    """Within the block the decode thread admits nobody: requests submitted meanwhile are
    admitted together, as one batch, when it ends (once `count` of them wait)."""

    def __init__(self, engine, count):
        self.engine, self.count, self.gate = engine, count, threading.Event()

    def __enter__(self):
        real, gate = self.engine.scheduler._admit, self.gate

        def gated(batch):
            gate.wait()
            return real(batch)

        self.engine.scheduler._admit = gated
        return self

    def __exit__(self, *exc):
        deadline = time.monotonic() + 30
        while self.engine.status()["queue"] < self.count and time.monotonic() < deadline and not exc[0]:
            time.sleep(0.01)
        del self.engine.scheduler._admit
        self.gate.set()


def submit_together(engine, jobs, trace=False):
    """Submit several requests so that they are admitted as one batch; returns them once all ended."""
    jobs = list(jobs)
    reqs = []
    for ids, adapter, settings in jobs:
        if adapter is not None:
            engine.ensure_adapter(adapter)
        req = Request(ids, adapter, settings, threading.Event(), {})
        req.trace = [] if trace else None
        reqs.append(req)
    with held(engine, len(reqs)):
        for req in reqs:
            engine.scheduler.submit([req])
    for req in reqs:
        req.text = "".join(Scheduler.pieces(req))
    return reqs


def assert_same_row(row, solo, at_least=1):
    """`row` (decoded in a batch) against `solo` (alone): logits within bf16 rounding while
    both have the same history; tokens equal while the logits were the same bits, and for
    greedy rows at every step but a near-tie of the solo run (tests/rounding.py), where
    other kernels may rightly take the other token: the rows then go separate ways.
    At least `at_least` tokens are compared, unless a greedy solo run began at a near-tie.
    Returns the steps whose tokens were compared."""
    greedy_row = row.settings.temperature == 0
    seen = list(solo.ids)
    compared = 0
    for ours, theirs, t_ours, t_theirs in zip(row.trace, solo.trace, row.tokens, solo.tokens):
        assert_within_bf16_rounding(ours[None], theirs[None], argmax=not greedy_row)
        if not greedy_row and not torch.equal(ours, theirs):
            break  # other bits: a near-tie may flip a sample from here (module docstring)
        if greedy_row and t_ours != t_theirs:
            assert near_tie(theirs, seen, solo.settings.repetition_penalty), f"step {compared}: another token without a near-tie"
            break
        assert t_ours == t_theirs
        seen.append(t_theirs)
        compared += 1
    assert compared >= at_least or (greedy_row and near_tie(solo.trace[0], solo.ids, solo.settings.repetition_penalty))
    if compared == len(solo.tokens):
        assert row.tokens == solo.tokens and row.text == solo.text
    return compared


def same_reply(engine, text, solo):
    """`text` (a reply decoded among others) against `solo` (the same greedy request alone,
    traced): the same text up to the first near-tie of the solo run, all of it if none."""
    stable = stable_steps(solo.trace, solo.tokens, solo.ids, solo.settings.repetition_penalty)
    if stable == len(solo.tokens):
        return text == solo.text
    return text.startswith(engine.tokenizer.decode(solo.tokens[:stable], skip_special_tokens=True))


@pytest.mark.parametrize("kernels", ["4-bit", "bf16 copies"])
def test_concurrent_streams_on_different_personas_form_one_batch_and_match_their_solo_replies(make_engine, tiny_adapters,
                                                                                            kernels, monkeypatch):
    if kernels == "bf16 copies":  # decode steps and prompts on the copies (core/engine/cpu_4bit.py)
        from core.engine import cpu_4bit

        timed = {r: {"bnb_ms": 2.0, "dense_ms": 1.0} for r in cpu_4bit.SHAPES}
        monkeypatch.setattr(cpu_4bit, "_time_regimes", lambda layers, copies, threads: timed)
        engine = make_engine(dense_budget=2**30)
        assert engine.cpu_4bit.regimes == {"decode": True, "prompt": True}
    else:
        engine = make_engine()
    adapters = refs(tiny_adapters)
    alone = [run_request(engine, p, a, greedy(), trace=True) for p, a in zip(PROMPTS, adapters)]
    results = [{} for _ in adapters]
    texts = [None] * len(adapters)
    barrier = threading.Barrier(len(adapters))

    def chat(i):
        barrier.wait()
        texts[i] = engine.generate(PROMPTS[i], adapters[i], greedy(), result=results[i])

    with held(engine, 4):  # the four arrive before the first prefill
        threads = [threading.Thread(target=chat, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
    for t in threads:
        t.join(60)
    assert all(r["batch"] == 4 for r in results), results
    assert all(same_reply(engine, text, solo) for text, solo in zip(texts, alone)), (texts, [r.text for r in alone])
    assert len(set(texts)) == 4  # four voices, not one
    together = submit_together(engine, zip(PROMPTS, adapters, [greedy()] * 4), trace=True)
    for solo, row in zip(alone, together):
        assert_same_row(row, solo)
    assert engine.status()["last_generation"]["batch"] == 4
    assert all(res.pins == 0 for res in engine._resident.values())


def test_a_seeded_sampled_row_gives_alone_what_it_gives_in_a_batch(make_engine, tiny_adapters):
    engine = make_engine()
    a = AdapterRef("a", tiny_adapters["a"])
    one = run_request(engine, PROMPT, a, sampled(41), trace=True)
    two = run_request(engine, PROMPT, a, sampled(41), trace=True)
    assert one.tokens == two.tokens and one.text == two.text  # same kernels, same shapes: bitwise
    assert all(torch.equal(x, y) for x, y in zip(one.trace, two.trace))
    assert run_request(engine, PROMPT, a, sampled(42)).tokens != one.tokens
    others = [(PROMPTS[1], AdapterRef("b", tiny_adapters["b"]), sampled(5)), (PROMPTS[2], None, sampled(6)),
              (PROMPTS[3], AdapterRef("c", tiny_adapters["c"]), greedy(16))]
    row = submit_together(engine, [(PROMPT, a, sampled(41))] + others, trace=True)[0]
    assert row.result["batch"] == 4
    assert_same_row(row, one)


def test_a_row_stopped_mid_batch_leaves_and_the_others_finish_unchanged(make_engine, tiny_adapters):
    engine = make_engine()
    adapters = refs(tiny_adapters)
    settings = lambda: sampled(3, n=40, min_new_tokens=40)  # noqa: E731
    alone = [run_request(engine, p, a, settings(), trace=True) for p, a in zip(PROMPTS, adapters)]
    stop = threading.Event()
    reqs = []
    for i, (ids, adapter) in enumerate(zip(PROMPTS, adapters)):
        if adapter is not None:
            engine.ensure_adapter(adapter)
        req = Request(ids, adapter, settings(), stop if i == 1 else threading.Event(), {})
        req.trace = []
        reqs.append(req)

    def stopper():
        deadline = time.monotonic() + 60
        while len(reqs[1].tokens) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        stop.set()

    watcher = threading.Thread(target=stopper)
    with held(engine, 4):
        for req in reqs:
            engine.scheduler.submit([req])
        watcher.start()
    texts = ["".join(Scheduler.pieces(req)) for req in reqs]
    watcher.join(60)
    assert reqs[1].result["finish_reason"] == "stopped" and reqs[1].result["stopped"] is True
    assert 3 <= len(reqs[1].tokens) < 40 and alone[1].text.startswith(texts[1]) and texts[1] != alone[1].text
    for i in (0, 2, 3):
        row = reqs[i]
        row.text = texts[i]
        assert row.result["finish_reason"] == "length" and len(row.tokens) == 40 and row.result["batch"] == 4
        # Logits within bf16 rounding of the row alone, the same draws while they are the same
        # bits; a batch's kernels may change the bits from the first step on some CPUs.
        assert_same_row(row, alone[i], at_least=0)


def test_stop_strings_end_the_reply_before_them_even_across_tokens(make_engine):
    engine = make_engine()
    full = run_request(engine, PROMPT, None, greedy(20))
    tok = engine.tokenizer
    # A stop string made of the end of one token's text and the start of the next.
    for k in range(2, len(full.tokens) - 1):
        before = tok.decode(full.tokens[:k], skip_special_tokens=True)
        after = tok.decode(full.tokens[: k + 1], skip_special_tokens=True)
        if len(before) >= 2 and len(after) - len(before) >= 2 and "\ufffd" not in after:
            break
    stop = before[-2:] + after[len(before) : len(before) + 2]
    cut = full.text.find(stop)
    assert 0 <= cut < len(before)  # the first occurrence spans a token boundary or comes earlier
    result, pieces = {}, []
    for piece in engine.stream(PROMPT, None, GenerationSettings(temperature=0, max_new_tokens=20, stop=(stop,)), result=result):
        pieces.append(piece)
        assert stop not in "".join(pieces)
    assert "".join(pieces) == full.text[:cut]
    assert result["finish_reason"] == "stop" and result["tokens"] < 20
    result = {}
    assert engine.generate(PROMPT, None, greedy(5), result=result) == run_request(engine, PROMPT, None, greedy(5)).text
    assert result["finish_reason"] == "length" and result["tokens"] == 5 and result["prompt_tokens"] == len(PROMPT)


def test_end_of_sequence_ends_a_row_with_finish_reason_stop(make_engine):
    engine = make_engine()
    full = run_request(engine, PROMPT, None, greedy(12))
    eos = full.tokens[4]  # declare the model's 5th token end-of-sequence (its config's list, replaced)
    first = full.tokens.index(eos)
    engine.scheduler.eos = (eos,)
    result = {}
    text = engine.generate(PROMPT, None, greedy(12), result=result)
    assert result["finish_reason"] == "stop" and result["tokens"] == first + 1
    assert text == engine.tokenizer.decode(full.tokens[:first], skip_special_tokens=True)
    # min_new_tokens keeps it from ending early, as generate does
    engine.generate(PROMPT, None, GenerationSettings(temperature=0, max_new_tokens=12, min_new_tokens=12), result=result)
    assert result["tokens"] == 12 and result["finish_reason"] == "length"


def test_eight_sessions_on_eight_personas_with_three_slots(make_engine, eight):
    engine = make_engine(max_resident=3)
    settings = lambda i: sampled(300 + i, n=10)  # noqa: E731
    alone = {i: engine.generate(PROMPT, eight[i], settings(i)) for i in range(8)}
    assert len(set(alone.values())) == 8
    released_while_pinned = []
    real_release = engine._release

    def release(name):
        res = engine._resident.get(name)
        if res is not None and res.pins:
            released_while_pinned.append(name)
        real_release(name)

    engine._release = release
    got, results, errors = {}, {}, []

    def session(i):
        try:
            for turn in range(3):
                results[(i, turn)] = {}
                got[(i, turn)] = engine.generate(PROMPT, eight[i], settings(i), result=results[(i, turn)])
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(got) == 24
    assert {k: v for k, v in got.items() if v != alone[k[0]]} == {}
    assert released_while_pinned == []
    assert max(r["batch"] for r in results.values()) > 1
    assert len(engine.resident()) <= 3 and engine.pool.slot_count() <= 3
    assert engine.idle(5) and engine.status()["queue"] == 0 and engine.status()["running"] == 0


def test_a_request_arriving_while_a_batch_runs_joins_it_at_a_step_boundary(make_engine, tiny_adapters):
    engine = make_engine()
    a, b = AdapterRef("a", tiny_adapters["a"]), AdapterRef("b", tiny_adapters["b"])
    long = lambda: GenerationSettings(temperature=0, max_new_tokens=300, min_new_tokens=300)  # noqa: E731
    solo_long = run_request(engine, PROMPT, a, long(), trace=True)
    solo_short = run_request(engine, PROMPTS[2], b, sampled(9, n=8), trace=True)
    long_req = Request(PROMPT, a, long(), threading.Event(), {})
    long_req.trace = []
    engine.scheduler.submit([long_req])
    pieces = Scheduler.pieces(long_req)
    first = next(pieces)
    short = run_request(engine, PROMPTS[2], b, sampled(9, n=8), trace=True)
    assert long_req.finish is None  # the short one ended while the long one still ran
    assert short.result["batch"] == 2
    long_text = first + "".join(pieces)
    assert long_req.result["batch"] == 2
    long_req.text = long_text
    assert_same_row(short, solo_short)
    assert assert_same_row(long_req, solo_long) == 300


def test_slots_pinned_by_running_rows_make_a_request_wait_not_fail(make_engine, tiny_adapters):
    engine = make_engine(max_resident=1)
    a, b = AdapterRef("a", tiny_adapters["a"]), AdapterRef("b", tiny_adapters["b"])
    solo_b = engine.generate(PROMPT, b, greedy(6))
    long_req = Request(PROMPT, a, GenerationSettings(temperature=0, max_new_tokens=200, min_new_tokens=200),
                       threading.Event(), {})
    engine.ensure_adapter(a)
    engine.scheduler.submit([long_req])
    pieces = Scheduler.pieces(long_req)
    next(pieces)
    result = {}
    t = threading.Thread(target=lambda: result.update(text=engine.generate(PROMPT, b, greedy(6), result=result)))
    t.start()  # b's own load needs the one slot: a's row holds it pinned
    "".join(pieces)
    t.join(60)
    assert long_req.result["finish_reason"] == "length" and long_req.result["batch"] == 1
    assert result["text"] == solo_b and result["batch"] == 1


def test_the_batch_follows_max_batch_and_the_memory_budget(make_engine, eight):
    from core.engine.scheduler import kv_bytes_per_token

    engine = make_engine(max_batch=2)
    reqs = submit_together(engine, [(PROMPT, eight[i], greedy(6)) for i in range(5)])
    assert max(r.result["batch"] for r in reqs) == 2
    per_row = kv_bytes_per_token(engine.model.config) * (len(PROMPT) + 6)
    engine = make_engine(kv_budget_bytes=3 * per_row)
    reqs = submit_together(engine, [(PROMPT, eight[i], greedy(6)) for i in range(5)])
    assert max(r.result["batch"] for r in reqs) == 3
    alone = make_engine(kv_budget_bytes=1)  # one row always runs, even over the budget
    assert alone.generate(PROMPT, None, greedy(3)) == engine.generate(PROMPT, None, greedy(3))


def test_a_failure_fails_only_its_batch_and_the_scheduler_goes_on(make_engine, monkeypatch):
    engine = make_engine()
    expected = engine.generate(PROMPT, None, greedy(6))
    real_step = engine.scheduler.decoder.step
    calls = []

    def broken(batch, tokens):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory in the test")
        return real_step(batch, tokens)

    monkeypatch.setattr(engine.scheduler.decoder, "step", broken)
    with pytest.raises(ChorusError, match="out of memory in the test"):
        engine.generate(PROMPT, None, greedy(6))
    assert engine.generate(PROMPT, None, greedy(6)) == expected
    assert engine.idle(5)


def test_a_consumer_that_goes_away_stops_its_row(make_engine):
    engine = make_engine()
    result = {}
    stream = engine.stream(PROMPT, None, GenerationSettings(temperature=0, max_new_tokens=400, min_new_tokens=400), result=result)
    next(stream)
    stream.close()
    assert engine.idle(30)
    assert result["finish_reason"] == "stopped" and result["tokens"] < 400


def test_group_decoding_is_one_batch(make_engine, tiny_adapters):
    engine = make_engine()
    requests = list(zip(PROMPTS, refs(tiny_adapters)))
    together = engine.generate_group(requests, greedy(8))
    gen = engine.status()["last_generation"]
    assert gen["group"] == 4 and gen["batch"] == 4 and gen["lean_rows"] is True
    alone = [run_request(engine, p, r, greedy(8), trace=True) for p, r in requests]
    assert all(same_reply(engine, text, solo) for text, solo in zip(together, alone)), (together, [r.text for r in alone])


class _CharTokenizer:
    """Token i is the string VOCAB[i] (a stand-in to drive TextGate by hand)."""

    VOCAB = ["Hel", "lo", "\n", "Us", "er", ":", " hi", "\n\n", "U"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.VOCAB[i] for i in ids)


@pytest.mark.parametrize("tokens, stop, shown", [
    ([0, 1, 2, 3, 4, 5, 6], "\nUser:", "Hello"),  # spans four tokens, starts with a line break
    ([0, 1, 2, 3, 4, 5, 6], "ser", "Hello\nU"),  # inside a token after a committed line
    ([0, 1, 7, 8, 6], "\nUs", "Hello\n\nU hi"),  # a prefix held back, then not a stop after all
])
def test_the_text_gate_never_shows_a_stop_string(tokens, stop, shown):
    from core.engine.sampling import TextGate

    gate = TextGate(_CharTokenizer(), (stop,))
    out = ""
    for t in tokens:
        out += gate.add(t)
        assert stop not in out
        if gate.hit:
            break
    out += gate.flush()
    assert out == shown and gate.hit == (stop in "".join(_CharTokenizer.VOCAB[t] for t in tokens))


def test_rows_sampled_together_draw_what_each_draws_alone():
    """The warpers run once for the rows that share them (one sort of the vocabulary for
    all); each row's token is still the one its own sampler picks alone, bitwise."""
    from core.engine.sampling import RowSampler, choose

    import dataclasses

    base = [sampled(1), sampled(2), greedy(), sampled(3, repetition_penalty=1.3),
            GenerationSettings(temperature=0.7, top_p=0.5, top_k=0, max_new_tokens=8, seed=4, min_new_tokens=4),
            sampled(1)]
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 2000, (1, 5 + i), generator=gen) for i in range(len(base))]
    for step in range(6):
        settings = [dataclasses.replace(s, seed=s.seed + step) for s in base]
        logits = torch.randn(len(settings), 2000, generator=gen) * 4
        solo = [RowSampler(s, (0,))(ids[i], logits[i : i + 1].clone(), step) for i, s in enumerate(settings)]
        together = choose([RowSampler(s, (0,)) for s in settings], ids, logits.clone(), [step] * len(settings))
        assert together == solo
        assert step >= 4 or solo[4] != 0  # min_new_tokens holds off end of text (token 0) for 4 tokens


def test_requests_sent_together_to_an_idle_engine_share_one_prefill(make_engine, tiny_adapters, monkeypatch):
    from core.engine import decode, scheduler

    monkeypatch.setattr(scheduler, "QUIET", 0.05)  # the behaviour, with room for a loaded machine
    monkeypatch.setattr(scheduler, "LINGER", 0.5)
    engine = make_engine()
    for r in refs(tiny_adapters):
        if r is not None:
            engine.ensure_adapter(r)  # resident: nothing read from disk between the submits
    prefills = []
    real = decode.Decoder.prefill
    monkeypatch.setattr(decode.Decoder, "prefill", lambda self, rows, *a: prefills.append(len(rows)) or real(self, rows, *a))
    adapters = refs(tiny_adapters)
    results = [{} for _ in adapters]
    barrier = threading.Barrier(len(adapters))

    def chat(i):
        barrier.wait()
        engine.generate(PROMPTS[i], adapters[i], greedy(4), result=results[i])

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert prefills == [4] and all(r["batch"] == 4 for r in results)
