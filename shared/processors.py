"""Loading a model's image-text processor, without torchvision where it cannot be imported.

Several families' stock processors (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, SmolVLM2,
InternVL) also build a video processor, which needs torchvision. A silo trains on images and
text only, so where torchvision is unusable (a CPU-only host: the index's wheel is a CUDA build)
the processor is assembled from its saved parts with the PIL image processor and no video
processor. Where torchvision works, the stock `AutoProcessor` path is used unchanged.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin
from transformers.models.auto import processing_auto

from shared.adapter import load_base_config

VIDEO_PROCESSOR = "video_processor"
_CLASS_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


class ProcessorLoadError(ValueError):
    """A model directory's processor cannot be loaded for training on images and text."""


@functools.cache
def torchvision_works() -> bool:
    """Whether torchvision imports next to this torch (a mismatched build fails at import)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or a RuntimeError from a build made for another torch
        return False
    return True


def load_processor(model_dir: Path, *, trust_remote_code: bool = False) -> ProcessorMixin:
    """The model's multimodal processor, from local files only; a processor the directory's
    own code defines is loaded with `trust_remote_code` as it is."""
    remote = trust_remote_code and _defines_own_processor(model_dir)
    if remote or torchvision_works():
        processor = AutoProcessor.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code
        )
    else:
        processor = _image_only_processor(model_dir)
    if not isinstance(processor, ProcessorMixin):
        raise ProcessorLoadError(
            f"{model_dir}: AutoProcessor gave {type(processor).__name__}, not a multimodal "
            "processor (is processor_config.json or preprocessor_config.json missing?)"
        )
    return processor


def _saved_processor_settings(model_dir: Path) -> Iterator[dict[str, Any]]:
    for name in _CLASS_FILES:
        path = model_dir / name
        if path.is_file():
            settings = json.loads(path.read_text())
            if isinstance(settings, dict):
                yield settings


def _defines_own_processor(model_dir: Path) -> bool:
    return any(
        "AutoProcessor" in (s.get("auto_map") or {}) for s in _saved_processor_settings(model_dir)
    )


def processor_class_name(model_dir: Path) -> str:
    """The processor class the directory names (as saved), else the family's stock one."""
    for settings in _saved_processor_settings(model_dir):
        saved = settings.get("processor_class")
        if isinstance(saved, str):
            return saved
    model_type = load_base_config(model_dir).model_type
    stock = processing_auto.PROCESSOR_MAPPING_NAMES.get(model_type)  # type: ignore[attr-defined]
    if not isinstance(stock, str):
        raise ProcessorLoadError(f"{model_dir}: no processor is known for model type {model_type}")
    return stock


_IMAGE_ONLY: dict[type[ProcessorMixin], type[ProcessorMixin]] = {}


def image_only(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`cls` without its video processor, under the same class name (so it saves as `cls`)."""
    if cls in _IMAGE_ONLY:
        return _IMAGE_ONLY[cls]
    attributes = [a for a in cls.get_attributes() if a != VIDEO_PROCESSOR]

    def get_attributes(_: type) -> list[str]:
        return attributes

    def __reduce__(self: ProcessorMixin) -> tuple[Any, ...]:  # made here, so not importable
        return _image_only_instance, (cls, self.__dict__)

    namespace = {"get_attributes": classmethod(get_attributes), "__reduce__": __reduce__}
    subclass: type[ProcessorMixin] = type(cls.__name__, (cls,), namespace)
    _IMAGE_ONLY[cls] = subclass
    return subclass


def _image_only_instance(cls: type[ProcessorMixin], state: dict[str, Any]) -> ProcessorMixin:
    """An unpickled image-only processor of `cls` (DataLoader workers in their own process)."""
    subclass = image_only(cls)
    processor: ProcessorMixin = subclass.__new__(subclass)
    processor.__dict__.update(state)
    return processor


def _video_placeholder(cls: type[ProcessorMixin]) -> dict[str, None]:
    """`video_processor=None` where the constructor takes one (SmolVLM's requires it)."""
    parameters = inspect.signature(cls.__init__).parameters
    return {VIDEO_PROCESSOR: None} if VIDEO_PROCESSOR in parameters else {}


def image_only_processor(
    cls: type[ProcessorMixin], *, image_processor: Any, tokenizer: Any, **kwargs: Any
) -> ProcessorMixin:
    """A processor of class `cls` built from its parts, with no video processor."""
    processor: ProcessorMixin = image_only(cls)(
        image_processor=image_processor, tokenizer=tokenizer, **_video_placeholder(cls), **kwargs
    )
    return processor


def _image_only_processor(model_dir: Path) -> ProcessorMixin:
    cls = processing_auto.processor_class_from_name(processor_class_name(model_dir))
    if cls is None or not issubclass(cls, ProcessorMixin):
        raise ProcessorLoadError(f"{model_dir}: unknown processor class")
    attributes = cls.get_attributes()
    unsupported = set(attributes) - {"image_processor", "tokenizer", VIDEO_PROCESSOR}
    if unsupported:
        raise ProcessorLoadError(
            f"{model_dir}: {cls.__name__} also needs {', '.join(sorted(unsupported))}, "
            "which this silo cannot load without torchvision"
        )
    parts: dict[str, Any] = {
        "tokenizer": AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True),
        "image_processor": AutoImageProcessor.from_pretrained(
            str(model_dir), local_files_only=True, backend="pil"
        ),
    }
    processor_dict, _ = cls.get_processor_dict(str(model_dir), local_files_only=True)
    args = [parts[a] for a in attributes if a != VIDEO_PROCESSOR]
    processor: ProcessorMixin = image_only(cls).from_args_and_dict(
        args, processor_dict, **_video_placeholder(cls)
    )
    return processor
