"""Prompt templates, verbatim, for every modality combination in both variants."""

from __future__ import annotations

import pytest

from shared.prompts import CRISISMMD, HATEFUL_MEMES, PromptVariant, build_prompt

TAIL = (
    "Options:\n(A) not-hateful\n(B) hateful\nAnswer with the option's letter from the given "
    "choices directly and only give the best option. The best answer is:"
)
SELECT = "Select the best answer to the following multiple-choice question"
AGNOSTIC = ", without considering the modality"
IS_HATEFUL = "Is the content hateful"


@pytest.mark.parametrize(
    ("variant", "text", "has_image", "expected"),
    [
        (
            PromptVariant.ORIGINAL,
            "go home",
            True,
            f"<image>\n{SELECT} based on the text and image.\ngo home\n"
            f"Is the content hateful based on the text and image?\n{TAIL}",
        ),
        (
            PromptVariant.ORIGINAL,
            "go home",
            False,
            f"{SELECT} based on the text.\ngo home\n{IS_HATEFUL} based on the text?\n{TAIL}",
        ),
        (
            PromptVariant.ORIGINAL,
            None,
            True,
            f"<image>\n{SELECT} based on the image.\n{IS_HATEFUL} based on the image?\n{TAIL}",
        ),
        (
            PromptVariant.IMPROVED,
            "go home",
            True,
            f"<image>\n{SELECT}{AGNOSTIC}.\ngo home\nIs the content hateful{AGNOSTIC}?\n{TAIL}",
        ),
        (
            PromptVariant.IMPROVED,
            "go home",
            False,
            f"{SELECT}{AGNOSTIC}.\ngo home\nIs the content hateful{AGNOSTIC}?\n{TAIL}",
        ),
        (
            PromptVariant.IMPROVED,
            None,
            True,
            f"<image>\n{SELECT}{AGNOSTIC}.\nIs the content hateful{AGNOSTIC}?\n{TAIL}",
        ),
    ],
)
def test_hateful_memes_templates_verbatim(
    variant: PromptVariant, text: str | None, has_image: bool, expected: str
) -> None:
    assert build_prompt(HATEFUL_MEMES, text=text, has_image=has_image, variant=variant) == expected


def test_targets_name_letter_and_label() -> None:
    assert HATEFUL_MEMES.target(1) == "(B) hateful"
    assert CRISISMMD.target(7) == "(H) not_humanitarian"


def test_crisismmd_keeps_its_own_modality_order() -> None:
    prompt = build_prompt(CRISISMMD, text="flood", has_image=True, variant=PromptVariant.ORIGINAL)
    assert "What is the humanitarian category based on the image and text?" in prompt
    assert "(H) not_humanitarian" in prompt


def test_a_sample_needs_a_modality() -> None:
    with pytest.raises(ValueError, match="at least one modality"):
        build_prompt(HATEFUL_MEMES, text=None, has_image=False, variant=PromptVariant.IMPROVED)
