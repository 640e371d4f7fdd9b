"""Multiple-choice prompts built from a sample's available modalities (PAPER.md, Table 13).

The original template names the modalities a sample has ("based on the text and image"); the
improved, modality-agnostic one replaces every such phrase with ", without considering the
modality", so that samples with different modalities share one prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

IMAGE_MARKER = "<image>"


class PromptVariant(str, Enum):
    ORIGINAL = "original"
    IMPROVED = "improved"


@dataclass(frozen=True)
class ChoiceTask:
    """A classification task phrased as a multiple-choice question."""

    stem: str
    options: tuple[str, ...]
    # How the original template names full modality, in the data set's own word order.
    full_modality: str

    def letter(self, index: int) -> str:
        return f"({chr(ord('A') + index)})"

    def target(self, label: int) -> str:
        """The answer a model is trained to give, e.g. '(B) hateful'."""
        return f"{self.letter(label)} {self.options[label]}"


HATEFUL_MEMES = ChoiceTask(
    stem="Is the content hateful",
    options=("not-hateful", "hateful"),
    full_modality="text and image",
)

CRISISMMD = ChoiceTask(
    stem="What is the humanitarian category",
    options=(
        "affected_individuals",
        "infrastructure_and_utility_damage",
        "injured_or_dead_people",
        "missing_or_found_people",
        "rescue_volunteering_or_donation_effort",
        "vehicle_damage",
        "other_relevant_information",
        "not_humanitarian",
    ),
    full_modality="image and text",
)

# The agreed-label split merges injured_or_dead_people and missing_or_found_people into
# affected_individuals, and vehicle_damage into infrastructure_and_utility_damage.
CRISISMMD_AGREED = ChoiceTask(
    stem=CRISISMMD.stem,
    options=(
        "affected_individuals",
        "infrastructure_and_utility_damage",
        "rescue_volunteering_or_donation_effort",
        "other_relevant_information",
        "not_humanitarian",
    ),
    full_modality=CRISISMMD.full_modality,
)


def _basis(task: ChoiceTask, *, has_image: bool, has_text: bool, variant: PromptVariant) -> str:
    if variant is PromptVariant.IMPROVED:
        return ", without considering the modality"
    if has_image and has_text:
        return f" based on the {task.full_modality}"
    return " based on the image" if has_image else " based on the text"


def build_prompt(
    task: ChoiceTask, *, text: str | None, has_image: bool, variant: PromptVariant
) -> str:
    """The user turn for one sample; `<image>` leads it when the sample has an image."""
    has_text = text is not None
    if not (has_image or has_text):
        raise ValueError("a sample needs at least one modality")
    basis = _basis(task, has_image=has_image, has_text=has_text, variant=variant)
    lines = []
    if has_image:
        lines.append(IMAGE_MARKER)
    lines.append(f"Select the best answer to the following multiple-choice question{basis}.")
    if has_text:
        lines.append(str(text))
    lines.append(f"{task.stem}{basis}?")
    lines.append("Options:")
    lines.extend(f"{task.letter(i)} {option}" for i, option in enumerate(task.options))
    lines.append(
        "Answer with the option's letter from the given choices directly and only give the "
        "best option. The best answer is:"
    )
    return "\n".join(lines)


TASKS: dict[str, ChoiceTask] = {
    "hateful_memes": HATEFUL_MEMES,
    "crisismmd": CRISISMMD,
    "crisismmd_agreed": CRISISMMD_AGREED,
}
