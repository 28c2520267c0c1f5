"""The hallucination guard: generated entities that contradict the item's own text.

A generated entity contradicts when the own text names entities of the same kind (names, or
numbers such as prices) and this one is not among them. Entities of a kind the own text
never mentions are new information (a brand read off a label), not contradictions.
"""

from __future__ import annotations

import pytest

from rar_pipeline.core.enhance.guard import GuardPolicy, apply_guard, contradictions

LISTING = "Listing 1001. Price $9.99, in stock."
QUESTION = "what lake is near Geneva?"


# ---------------------------------------------------------------------------
# what is flagged


def test_a_price_that_differs_from_the_own_text_is_flagged():
    flagged = contradictions("A red circle toy, priced $4.99.", LISTING)
    assert flagged == ["4.99"]


def test_a_price_that_agrees_with_the_own_text_is_not_flagged():
    assert contradictions("A red circle toy, priced $9.99.", LISTING) == []


def test_a_price_that_is_a_substring_of_the_own_price_is_still_flagged():
    assert contradictions("A red circle toy, priced $9.99.", "Listing 1001. Price $19.99.") == [
        "9.99"
    ]


def test_a_brand_read_off_a_label_is_new_information_when_the_own_text_names_nobody():
    caption = "A teal triangle above a printed label reading QUORBLE. Made by Quorble."
    assert contradictions(caption, LISTING) == []


def test_a_name_that_contradicts_a_name_in_the_own_text_is_flagged():
    flagged = contradictions("A view of Lake Como from the shore.", QUESTION)
    assert "como" in flagged
    assert "lake" not in flagged  # the own text says 'lake' too


def test_names_the_own_text_also_uses_are_not_flagged():
    assert contradictions("A view of Lake Geneva from the shore.", QUESTION) == []


@pytest.mark.parametrize("own", [None, ""])
def test_without_own_text_nothing_is_flagged(own):
    caption = "A teal triangle by Quorble from Tallinn, priced $4.99, made in 1962."
    assert contradictions(caption, own) == []
    for policy in GuardPolicy:
        result = apply_guard(caption, own, policy)
        assert result.text == caption
        assert result.flagged == ()
        assert result.dropped is False


# ---------------------------------------------------------------------------
# policies

CAPTION = "A red circle toy priced $4.99 with a QUORBLE label."


def test_keep_flags_but_keeps_the_text_as_generated():
    result = apply_guard(CAPTION, LISTING, GuardPolicy.KEEP)
    assert result.text == CAPTION
    assert result.flagged == ("4.99",)
    assert result.dropped is False


def test_strip_removes_only_the_flagged_tokens():
    result = apply_guard(CAPTION, LISTING, GuardPolicy.STRIP)
    assert result.flagged == ("4.99",)
    assert result.dropped is False
    assert result.text is not None
    assert "4.99" not in result.text and "$" not in result.text
    assert result.text.split() == [w for w in CAPTION.split() if w != "$4.99"]


def test_strip_removes_every_occurrence_of_a_contradicting_name_and_nothing_else():
    caption = "Lake Como seen from a boat; Como town on the far shore."
    result = apply_guard(caption, QUESTION, GuardPolicy.STRIP)
    assert result.flagged == ("como",)
    assert result.text is not None
    assert result.text.split() == [w for w in caption.split() if w != "Como"]


def test_drop_discards_the_generated_text():
    result = apply_guard(CAPTION, LISTING, GuardPolicy.DROP)
    assert result.text is None
    assert result.dropped is True
    assert result.flagged == ("4.99",)


@pytest.mark.parametrize("policy", list(GuardPolicy))
def test_no_policy_touches_a_text_without_contradictions(policy: GuardPolicy):
    caption = "A red circle toy priced $9.99 with a QUORBLE label."
    result = apply_guard(caption, LISTING, policy)
    assert result.text == caption
    assert result.flagged == ()
    assert result.dropped is False


def test_policies_are_named_as_configured():
    assert {p.value for p in GuardPolicy} == {"keep", "strip", "drop"}
    assert GuardPolicy("strip") is GuardPolicy.STRIP
