"""The words engine with the real SmolLM2-135M (offline, from the PyPI wheel)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli
from wordsworlds.errors import InputError, check_prompt
from wordsworlds.words.next_token import MAX_NEW_TOKENS_CAP, validate_options

PROMPT = "Name three colours."


def test_greedy_decoding_is_deterministic(text_generator):
    first = text_generator.generate(PROMPT, max_new_tokens=12)
    second = text_generator.generate(PROMPT, max_new_tokens=12)
    assert first.text == second.text
    assert [s.token_id for s in first.steps] == [s.token_id for s in second.steps]


def test_probabilities_are_valid_and_greedy_picks_the_top_one(text_generator):
    result = text_generator.generate(PROMPT, max_new_tokens=10, top_n=5)
    assert result.steps
    for step in result.steps:
        assert 0 < step.prob <= 1
        probs = [p for _, p in step.top]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-5
        assert math.isclose(step.prob, probs[0], rel_tol=1e-6)  # greedy: the chosen token is the top-1


def test_max_new_tokens_is_respected_and_counted(text_generator):
    result = text_generator.generate("Count from one to one hundred.", max_new_tokens=7)
    assert len(result.steps) <= 7
    assert result.stats.new_tokens == len(result.steps)
    assert result.stats.forward_passes == len(result.steps)  # prompt pass + one per later token
    assert result.text == "".join(s.text for s in result.steps)


def test_seeded_sampling_repeats_and_differs_from_another_seed(text_generator):
    options = dict(max_new_tokens=12, temperature=1.2, top_p=0.95)
    a = text_generator.generate("Once upon a time", seed=1, chat=False, **options).text
    b = text_generator.generate("Once upon a time", seed=1, chat=False, **options).text
    c = text_generator.generate("Once upon a time", seed=2, chat=False, **options).text
    assert a == b
    assert a != c


def test_cancel_stops_between_tokens(text_generator):
    calls = []
    steps = list(text_generator.stream(PROMPT, max_new_tokens=30, should_stop=lambda: calls.append(1) or len(calls) >= 3))
    assert len(steps) == 3


@pytest.mark.parametrize(
    "prompt, message",
    [("", "empty"), ("   \n", "empty"), ("x" * 1_000_000, "limit"), (42, "must be text")],
)
def test_bad_prompts_are_rejected(prompt, message):
    with pytest.raises(InputError, match=message):
        check_prompt(prompt)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "finite"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=MAX_NEW_TOKENS_CAP + 1), "max_new_tokens"),
        (dict(max_new_tokens="ten"), "number"),
        (dict(top_k=-1), "top_k"),
        (dict(seed=1.5), "whole number"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(InputError, match=message):
        validate_options(**kwargs)


def test_cli_json_and_bad_input_exit_code(capsys):
    code, out, err = run_cli(capsys, "text", PROMPT, "--max-new-tokens", "4", "--json")
    assert code == 0, err
    payload = json.loads(out[out.index("{"):])
    assert payload["stats"]["new_tokens"] == len(payload["tokens"]) <= 4
    code, _, err = run_cli(capsys, "text", PROMPT, "--temperature", "nan")
    assert code == 2 and "temperature" in err


def test_words_endpoint_answers_through_gradio_client(app_client):
    shaded, top, stats = app_client.predict(PROMPT, 6, 0, 0, 1, 0, api_name="/generate_text")
    assert 1 <= len(shaded) <= 6
    assert all(0 < item["class_or_confidence"] <= 1 for item in shaded)
    assert top["confidences"] and "tokens/s" in stats
    with pytest.raises(Exception, match="empty"):
        app_client.predict("  ", 6, 0, 0, 1, 0, api_name="/generate_text")
    with pytest.raises(Exception, match="-1 is less than minimum"):  # the slider's own bound check
        app_client.predict(PROMPT, 6, -1, 0, 1, 0, api_name="/generate_text")
    with pytest.raises(Exception, match="max_new_tokens|maximum"):
        app_client.predict(PROMPT, 10_000, 0, 0, 1, 0, api_name="/generate_text")


class _ScriptedModel(torch.nn.Module):
    """Stands in for the LLM: emits the given token ids in order (logits peaked on each), so the
    engine's detokenizing can be tested on text that splits characters over several tokens."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.device = self.anchor.device

    def forward(self, input_ids, past_key_values=None, use_cache=True, **kwargs):
        logits = torch.full((1, input_ids.shape[1], self.vocab), -30.0)
        logits[0, -1, self.script[min(self.calls, len(self.script) - 1)]] = 30.0
        self.calls += 1
        return SimpleNamespace(logits=logits, past_key_values=None)


@pytest.mark.parametrize("text", ["Café au lait 🎨🙂", "naïve résumé — ½ ✓", "日本語のテキスト"])
def test_characters_split_over_tokens_show_whole_never_as_replacement_marks(text_generator, text):
    from wordsworlds.words.next_token import TextGenerator

    tokenizer = text_generator.tokenizer
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # the case in point: some tokens are partial bytes
    engine = TextGenerator(_ScriptedModel(ids + [tokenizer.eos_token_id], len(tokenizer)), tokenizer)
    result = engine.generate("Say it.", max_new_tokens=len(ids) + 1, chat=False)
    assert result.text == text
    assert all("\ufffd" not in step.text for step in result.steps)
    assert all("\ufffd" not in label for step in result.steps for label, _ in step.top)
    assert result.steps[-1].end and result.steps[-1].text == ""


def test_the_default_answers_keep_the_full_precision_model_quality(text_generator):
    """The default precision answers as the model does (int8 made "What is 2 plus 2?" answer "2")."""
    assert text_generator.report.dtype == "fp32"
    answer = text_generator.generate("What is 2 plus 2?", max_new_tokens=16).text
    assert "4" in answer or "four" in answer.lower()
    assert "\ufffd" not in text_generator.generate(PROMPT, max_new_tokens=24).text


@pytest.mark.parametrize("prompt", ["a\x00b", "red \x1b[31mcircle", "bell\x07"])
def test_control_characters_are_refused_with_a_clear_message(prompt):
    with pytest.raises(InputError, match="control characters"):
        check_prompt(prompt)
    assert check_prompt("two lines\n\tand a tab") == "two lines\n\tand a tab"
