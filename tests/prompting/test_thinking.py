"""<think> blocks never reach the persona's words, however the reply is cut into pieces."""

import itertools

from core.thinking import ThinkFilter, prompt_opens_thinking, split_thinking


def run(pieces, inside=False):
    f = ThinkFilter(inside)
    shown = [f.feed(p) for p in pieces] + [f.finish()]
    return shown, f


REPLY = "<think>\nThe user wants a port. Tortuga.\n</think>\n\nTo Tortuga, matey!"


def test_a_block_before_the_answer_is_kept_aside():
    assert split_thinking(REPLY) == ("To Tortuga, matey!", "The user wants a port. Tortuga.")


def test_a_block_split_anywhere_across_deltas_never_leaks():
    for a, b in itertools.combinations(range(1, len(REPLY)), 2):  # every three-piece cut
        shown, f = run([REPLY[:a], REPLY[a:b], REPLY[b:]])
        assert "".join(shown) == "To Tortuga, matey!", (a, b)
        for piece in shown:  # no delta carries any part of a tag or of the thought
            assert "<" not in piece and "think" not in piece and "Tortuga." not in piece, (a, b)
        assert f.thinking == "The user wants a port. Tortuga."


def test_one_character_at_a_time():
    shown, f = run(list("Aye. " + REPLY + " <thin> stays."))
    assert "".join(shown) == "Aye. To Tortuga, matey! <thin> stays."
    assert f.thinking == "The user wants a port. Tortuga."


def test_an_unclosed_block_at_the_end_is_thinking_not_words():
    shown, f = run(["<think>I must ", "decide whether"])
    assert "".join(shown) == "" and f.unclosed and f.thinking == "I must decide whether"


def test_a_tag_start_that_never_completes_is_shown_at_the_end():
    shown, f = run(["Price: 3 <", "thi"])
    assert "".join(shown) == "Price: 3 <thi" and f.thinking == "" and not f.unclosed
    assert shown[-1] == "<thi"  # held back until it could no longer become a tag


def test_thinking_begun_in_the_prompt_and_a_stray_close():
    shown, f = run(["hmm, a port", "</think>\n\nTortuga!"], inside=True)
    assert "".join(shown) == "Tortuga!" and f.thinking == "hmm, a port"
    assert split_thinking("Aye</think> then") == ("Aye then", "")
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_several_blocks():
    assert split_thinking("<think>a</think>One. <think>b</think>Two.") == ("One. Two.", "a\n\nb")


def test_finish_twice_is_harmless():
    f = ThinkFilter()
    f.feed("<think>x")
    assert f.finish() == "" and f.finish() == "" and f.thoughts == ["x"]


def test_the_page_shows_a_kept_thought_collapsed_and_escaped():
    from ui.render import message_html

    msg = {"id": 7, "role": "assistant", "content": "Tortuga!", "persona_name": "Mara", "meta": {"thinking": "a <b>port</b>"}}
    html = message_html(msg, {})
    assert '<details class="ch-thinking"><summary>Thinking</summary><pre>a &lt;b&gt;port&lt;/b&gt;</pre></details>' in html
    assert "<details" not in message_html({**msg, "meta": {}}, {})
