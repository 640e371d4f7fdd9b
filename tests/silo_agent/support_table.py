"""The supported-families table: what the conformance suite asserts per family, and the
table docs/models.md shows (a test fails if the two differ)."""

from __future__ import annotations

from dataclasses import dataclass

MIXES = ("image+text", "image only", "text only", "mixed")


@dataclass(frozen=True)
class Support:
    """One family's row: what it is and which modality mixes train (4-bit: every family)."""

    name: str  # as people call it
    model_type: str  # config.json's model_type
    example: str  # a published checkpoint of the family
    mixes: tuple[str, ...] = MIXES  # the mixes that train; the others are refused by check
    remote_code: bool = False  # needs --trust-remote-code
    notes: str = ""


SUPPORT: dict[str, Support] = {
    "qwen2_vl": Support("Qwen2-VL", "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct"),
    "qwen2_5_vl": Support("Qwen2.5-VL", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct"),
    "qwen3_vl": Support("Qwen3-VL", "qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct"),
    "llava": Support("LLaVA-1.5", "llava", "llava-hf/llava-1.5-7b-hf"),
    "llava_next": Support("LLaVA-NeXT", "llava_next", "llava-hf/llava-v1.6-mistral-7b-hf"),
    "llava_onevision": Support(
        "LLaVA-OneVision", "llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    ),
    "idefics3": Support("Idefics3, SmolVLM", "idefics3", "HuggingFaceTB/SmolVLM-Instruct"),
    "smolvlm": Support("SmolVLM2", "smolvlm", "HuggingFaceTB/SmolVLM2-2.2B-Instruct"),
    "gemma3": Support("Gemma 3", "gemma3", "google/gemma-3-4b-it"),
    "paligemma": Support(
        "PaliGemma",
        "paligemma",
        "google/paligemma-3b-mix-224",
        mixes=("image+text", "image only"),
        notes="its processor needs an image in every sample: text-only data is refused; "
        "the answer is the causal suffix (token type 1)",
    ),
    "paligemma2": Support(
        "PaliGemma 2",
        "paligemma",
        "google/paligemma2-3b-mix-224",
        mixes=("image+text", "image only"),
        notes="as PaliGemma (Gemma 2 language model)",
    ),
    "mllama": Support(
        "Llama 3.2 Vision",
        "mllama",
        "meta-llama/Llama-3.2-11B-Vision-Instruct",
        notes="LoRA also on the cross-attention layers' q,k,v,o",
    ),
    "internvl": Support("InternVL 3", "internvl", "OpenGVLab/InternVL3-8B-hf"),
    "minicpmv": Support(
        "MiniCPM-V 2.6",
        "minicpmv",
        "openbmb/MiniCPM-V-2_6",
        remote_code=True,
        notes="the paper's model; its own code (--trust-remote-code), tested with a tiny "
        "stand-in that keeps its interfaces",
    ),
}


def supported_mixes(family: str) -> tuple[str, ...]:
    """The mixes that train ('mixed': one batch of every kind); the others are refused."""
    return SUPPORT[family].mixes


def render_table() -> str:
    """The Markdown table of docs/models.md."""
    header = ["family", "model_type", "e.g.", *MIXES, "4-bit", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in SUPPORT.values():
        marks = ["yes" if m in row.mixes else "refused" for m in MIXES]
        cells = [
            row.name,
            f"`{row.model_type}`",
            f"`{row.example}`",
            *marks,
            "yes",
            row.notes,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
