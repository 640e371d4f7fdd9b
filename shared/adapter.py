"""The federation's LoRA adapter: which modules it targets, its layout, its initial weights.

Both sides derive the adapter from the same base-model config, so that the coordinator can build
it without ever loading base weights (a model instantiated on the meta device has none).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from shared.errors import IncompatibleSilo
from shared.tensor_codec import StateDict

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")

# Keys that say how a config was saved or loaded, not what the model is.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "dtype",
        "torch_dtype",
        "quantization_config",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


_IDENTITY_KEYS = ("model_type", "architectures")


def default_lora_config(target_modules: str) -> LoraConfig:
    """The paper's adapter: r 8, alpha 8, dropout 0.05, on the given modules."""
    return LoraConfig(
        r=8, lora_alpha=8, lora_dropout=0.05, target_modules=target_modules, bias="none"
    )


def language_attention_targets(model: PreTrainedModel) -> str:
    """A regex (PEFT full-match) for the language model's attention projections only.

    Plain names like "q_proj" also hit the vision tower; anchoring on the decoder's module path
    leaves the vision tower and the projector untouched, whatever the model family names them.
    """
    decoder = model.get_decoder()
    prefix = next((name for name, module in model.named_modules() if module is decoder), None)
    if not prefix:
        raise IncompatibleSilo(f"cannot locate the language model inside {type(model).__name__}")
    projections = "|".join(ATTENTION_PROJECTIONS)
    return rf"{re.escape(prefix)}\..*\.({projections})"


def canonical_config(config: PretrainedConfig) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in sorted(value.items()) if k not in _VOLATILE_CONFIG_KEYS}
        return value

    # through JSON, so that the silo's copy and the coordinator's compare alike (int keys)
    result: dict[str, Any] = json.loads(json.dumps(clean(config.to_dict()), default=str))
    return result


def config_fingerprint(canonical: dict[str, Any]) -> str:
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def describe_config_difference(
    ours: dict[str, Any], theirs: dict[str, Any], *, limit: int = 5
) -> list[str]:
    """Dotted keys whose values differ, e.g. 'text_config.hidden_size: 128, expected 64'."""
    problems: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(problems) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            # what the model is comes first, then the details
            for key in sorted(a.keys() | b.keys(), key=lambda k: (k not in _IDENTITY_KEYS, str(k))):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        elif a != b:
            problems.append(f"{path}: {json.dumps(b)}, expected {json.dumps(a)}")

    walk(ours, theirs, "")
    return problems


# Auto classes a remote-code model may register (config.json "auto_map"), most specific first.
_REMOTE_AUTO_CLASSES = {
    "AutoModelForImageTextToText": AutoModelForImageTextToText,
    "AutoModelForCausalLM": AutoModelForCausalLM,
    "AutoModel": AutoModel,
}


class RemoteCodeRequired(ValueError):
    """The model's code ships with its directory and this caller may not (or will not) run it."""


def model_auto_class(config: PretrainedConfig, *, trust_remote_code: bool = False) -> Any:
    """The Auto class that builds this model: transformers' own image-text-to-text class, or
    with `trust_remote_code` the class the directory's own code registers."""
    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    auto_map = getattr(config, "auto_map", None) or {}
    if not trust_remote_code:
        hint = (
            "it ships its own modeling code: pass --trust-remote-code to load it on a silo; "
            "a coordinator never runs model code, so start it with --adapter DIR made by "
            "`silo-agent init-adapter --model DIR --trust-remote-code --out DIR`"
            if auto_map
            else "it is not an image-text-to-text model this transformers version ships"
        )
        raise RemoteCodeRequired(f"model type {config.model_type!r}: {hint}")
    for name, auto in _REMOTE_AUTO_CLASSES.items():
        if name in auto_map:
            return auto
    raise RemoteCodeRequired(
        f"model type {config.model_type!r}: config.json auto_map names none of "
        f"{', '.join(_REMOTE_AUTO_CLASSES)}"
    )


def meta_model(config: PretrainedConfig, *, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model's module tree with no weights (meta device): cheap, whatever the model's size."""
    auto = model_auto_class(config, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model: PreTrainedModel = auto.from_config(config, trust_remote_code=trust_remote_code)
    return model


def lora_layout_state(
    config: PretrainedConfig, lora: LoraConfig | None, *, trust_remote_code: bool = False
) -> tuple[LoraConfig, StateDict]:
    """The adapter's (meta) state dict as PEFT names it, and the LoRA config used."""
    model = meta_model(config, trust_remote_code=trust_remote_code)
    lora = lora or default_lora_config(language_attention_targets(model))
    peft_model = get_peft_model(model, lora)
    return lora, get_peft_model_state_dict(peft_model)


def initial_adapter(
    config: PretrainedConfig,
    *,
    seed: int,
    lora: LoraConfig | None = None,
    trust_remote_code: bool = False,
) -> tuple[LoraConfig, StateDict]:
    """A fresh adapter as PEFT initialises one (A Kaiming-uniform, B zero), seeded."""
    lora, meta_state = lora_layout_state(config, lora, trust_remote_code=trust_remote_code)
    generator = torch.Generator().manual_seed(seed)
    state: StateDict = {}
    for name, tensor in sorted(meta_state.items()):
        real = torch.empty(tensor.shape, dtype=tensor.dtype)
        if ".lora_A." in name:
            # nn.init.kaiming_uniform_(a=sqrt(5)) bound, as PEFT's default LoRA init
            bound = 1.0 / math.sqrt(tensor.shape[1])
            real.uniform_(-bound, bound, generator=generator)
        else:
            real.zero_()
        state[name] = real
    return lora, state


def load_adapter_directory(directory: Path) -> tuple[LoraConfig, StateDict]:
    """A PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
    weights = directory / "adapter_model.safetensors"
    if not (directory / "adapter_config.json").is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{directory}: a PEFT adapter directory needs adapter_config.json and "
            "adapter_model.safetensors"
        )
    lora = LoraConfig.from_pretrained(str(directory))
    return lora, load_file(str(weights))


def write_adapter_directory(directory: Path, lora: LoraConfig, state: StateDict) -> None:
    """A PEFT adapter directory that `load_adapter_directory` (and PEFT) read back."""
    directory.mkdir(parents=True, exist_ok=True)
    lora.save_pretrained(str(directory))
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(directory / "adapter_model.safetensors")
    )


def load_base_config(model_dir: Path) -> PretrainedConfig:
    """The model's config as both sides read it for the federation's identity, never running
    code: a model type transformers does not know (remote code) is read from config.json as is."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; expected a Hugging Face model dir")
    data = json.loads(path.read_text())
    model_type = data.get("model_type")
    if model_type in CONFIG_MAPPING:
        config: PretrainedConfig = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        return config
    if not isinstance(model_type, str):
        raise ValueError(f"{path}: no model_type")
    plain: type[PretrainedConfig] = type(
        "RemoteCodeConfig", (PretrainedConfig,), {"model_type": model_type}
    )
    remote: PretrainedConfig = plain.from_dict(data)
    return remote


def load_model_config(model_dir: Path, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config the model is built from: with `trust_remote_code`, the directory's own class."""
    if not trust_remote_code:
        return load_base_config(model_dir)
    config: PretrainedConfig = AutoConfig.from_pretrained(
        str(model_dir), local_files_only=True, trust_remote_code=True
    )
    return config


def lora_identity(lora: dict[str, Any]) -> dict[str, Any]:
    """The LoRA settings (from PEFT's config dict) that must agree across the federation.

    Dropout may differ per silo: it changes training, not the adapter's layout or meaning.
    """
    targets = lora.get("target_modules")
    if isinstance(targets, (set, list, tuple)):
        targets = sorted(targets)
    return {
        "r": lora.get("r"),
        "lora_alpha": lora.get("lora_alpha"),
        "target_modules": targets,
        "bias": lora.get("bias"),
        "use_rslora": lora.get("use_rslora", False),
        "use_dora": lora.get("use_dora", False),
    }


def lora_json(lora: LoraConfig) -> str:
    data = lora.to_dict()
    data.update(lora_identity(data))
    return json.dumps(data, default=str, sort_keys=True)
