"""The message catalogue: every text in both languages, Bahasa Indonesia first, codes stable."""

from __future__ import annotations

import string

import pytest

from appliance.core import messages
from appliance.core.messages import CATALOGUE, Problem, message, problem, problem_text, say


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_every_text_has_both_languages_with_the_same_placeholders(code: str) -> None:
    indonesian, english = CATALOGUE[code]
    assert indonesian.strip() and english.strip()
    assert placeholders(indonesian) == placeholders(english), code


@pytest.mark.parametrize("code", sorted(code for code in CATALOGUE if code.startswith(("config.", "wifi.", "provision.",
                                                                                       "console.", "cli."))))
def test_configuration_texts_are_plain_ascii_for_a_windows_console(code: str) -> None:
    assert all(text.isascii() for text in CATALOGUE[code]), code


def test_indonesian_is_the_default_and_english_is_asked_for() -> None:
    assert say("config.required") == "wajib diisi, tetapi tidak ada"
    assert say("config.required", "en") == "required but missing"
    assert say("config.required", "fr") == "wajib diisi, tetapi tidak ada"  # not in the catalogue: the default
    assert messages.language("en") == "en" and messages.language(None) == "id" and messages.language("en_GB") == "id"


def test_a_problem_is_its_indonesian_line_and_says_english_too() -> None:
    wrong = problem("site.toml", "broker.keepalive_s", "config.wrong_type", kind=message("config.type.int"), value="30")
    assert isinstance(wrong, str)
    assert wrong == "site.toml: broker.keepalive_s: harus bilangan bulat, bukan '30'"
    assert wrong.text("en") == "site.toml: broker.keepalive_s: expected a whole number, got '30'"
    assert (wrong.file, wrong.key, wrong.code) == ("site.toml", "broker.keepalive_s", "config.wrong_type")
    whole_file = Problem("site.toml", "", message("config.bad_toml", error="line 1"))
    assert whole_file.text("en") == "site.toml: not valid TOML (line 1)"
    assert problem_text(wrong, "en") == wrong.text("en") and problem_text("a line read back", "en") == "a line read back"


def test_an_unknown_code_is_a_mistake_found_at_once() -> None:
    with pytest.raises(KeyError):
        message("selftest.no_such_text")
