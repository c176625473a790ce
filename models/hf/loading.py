"""Loading transformers models by Hugging Face repo id (cache first) or from a ``save_pretrained`` directory.

A repo id is looked up in the local cache first, with no network; only when
it is not there, and the hub answers, is it downloaded. Offline
(``HF_HUB_OFFLINE=1``, or no network) a model that is not cached gets a
one-line error naming the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from heatmap.errors import HeatmapError, UsageError

Kind = Literal["classifier", "image-text"]
HF_EXTRA = 'pip install "vit-heatmap[hf]"'

# architecture -> kind; the class a config without `architectures` gets, by model type
SUPPORTED = {"ViTForImageClassification": "classifier", "DeiTForImageClassification": "classifier",
             "DeiTForImageClassificationWithTeacher": "classifier", "CLIPModel": "image-text",
             "SiglipModel": "image-text"}
_BY_MODEL_TYPE = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification", "clip": "CLIPModel",
                  "siglip": "SiglipModel"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_PROCESSOR_FILE = "preprocessor_config.json"


def is_hf_name(name: str | None) -> bool:
    """Whether ``name`` names a transformers model: a repo id (``org/name``) or a ``save_pretrained`` directory."""
    if not name or name.startswith("hf-hub:"):
        return False
    if (Path(name) / "config.json").is_file():
        return True
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists()


def require_transformers(name: str) -> Any:
    """The ``transformers`` module, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UsageError(f"{name} is a Hugging Face transformers model; install the extra: {HF_EXTRA}") from None
    return transformers


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within: transformers' progress bars and notes are not shown (the CLI draws its own progress)."""
    from transformers.utils import logging as transformers_logging

    logging: Any = transformers_logging  # partly untyped
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _from_pretrained(loader: Any, name: str, what: str, usable: Callable[[Any], bool] = lambda _: True) -> Any:
    """``loader.from_pretrained(name)``: the local cache first; the hub only when the cached copy is missing or
    not ``usable`` (transformers builds an empty tokenizer from a config when the tokenizer's files are missing)."""
    with quiet_transformers():
        return _cache_first(loader, name, what, usable)


def _cache_first(loader: Any, name: str, what: str, usable: Callable[[Any], bool]) -> Any:
    from heatmap.models.checkpoints import hub_reachable

    if Path(name).is_dir():
        try:
            found = loader.from_pretrained(name)
        except ImportError as error:
            raise _missing_package(name, what, error) from None
        except Exception as error:  # unreadable files of every kind: the user's folder, not a bug here
            raise HeatmapError(f"{name}: {what} could not be read from this folder ({_first_line(error)}); "
                               "save the model there with save_pretrained") from None
        if not usable(found):
            raise HeatmapError(f"{name}: this folder has no {what}; save it there with save_pretrained")
        return found
    reason = "offline"
    try:
        found = loader.from_pretrained(name, local_files_only=True)
        if usable(found):
            return found
        reason = "the cached copy is incomplete"
    except ImportError as error:
        raise _missing_package(name, what, error) from None
    except ValueError as error:  # found, but not something transformers can read
        raise HeatmapError(f"{name}: {what} could not be read ({_first_line(error)})") from None
    except OSError as cached_error:
        if "does not appear to have" in str(cached_error):
            reason = _first_line(cached_error)
    if hub_reachable():
        try:
            found = loader.from_pretrained(name)
            if usable(found):
                return found
            reason = "the hub's copy is incomplete"
        except ImportError as error:
            raise _missing_package(name, what, error) from None
        except (OSError, ValueError) as error:
            reason = _first_line(error)
    raise HeatmapError(f"{what} of {name} is not in the local Hugging Face cache and could not be downloaded "
                       f"({reason}); download it once with network access (`hf download {name}`), or pass a local "
                       "directory saved with save_pretrained")


def _missing_package(name: str, what: str, error: ImportError) -> HeatmapError:
    return HeatmapError(f"{name}: {what} needs a package that is not installed ({_first_line(error)}); "
                        f"{HF_EXTRA} installs what vit-heatmap's transformers models need")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def architecture(config: Any, name: str) -> str:
    """The supported class a config names (``architectures``, else by ``model_type``)."""
    names = list(getattr(config, "architectures", None) or [])
    supported = [arch for arch in names if arch in SUPPORTED]
    if supported:
        return str(supported[0])
    if not names and config.model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[config.model_type]
    raise UsageError(f"{name}: {', '.join(names) or config.model_type} is not supported; the transformers classes "
                     f"that are: {', '.join(SUPPORTED)}")


def load_hf(name: str, kind: Kind, device: Any) -> Any:
    """A transformers model by repo id or directory, wrapped in its adapter (on ``device``)."""
    transformers = require_transformers(name)
    config = _from_pretrained(transformers.AutoConfig, name, "the config")
    arch = architecture(config, name)
    if SUPPORTED[arch] != kind:
        command = "heatmap clip" if SUPPORTED[arch] == "image-text" else "a method command (heatmap rollout, ...)"
        raise UsageError(f"{name} is {'an image-text model' if kind == 'classifier' else 'a classifier'} "
                         f"({arch}); explain it with {command}")
    model = _from_pretrained(getattr(transformers, arch), name, "the weights").to(device)
    transform = image_transform(model, name, saved_image_processor(name))
    if kind == "classifier":
        from heatmap.models.hf.classifier import HfClassifierAdapter

        return HfClassifierAdapter(model, name, transform)
    from heatmap.models.hf.image_text import HfImageTextAdapter

    vocabulary = int(model.config.text_config.vocab_size)
    # a tokenizer far smaller than the model's vocabulary was built from the config alone: its files are missing
    tokenizer = _from_pretrained(transformers.AutoTokenizer, name, "the tokenizer",
                                 usable=lambda found: 2 * len(found) >= vocabulary)
    return HfImageTextAdapter(model, name, tokenizer, transform)


def saved_image_processor(name: str) -> Any:
    """The image processor saved with a repo or folder (cache first), or None when it has none.

    Raises:
        HeatmapError: offline, when the cache cannot say whether the repo has one.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    from heatmap.models.checkpoints import hub_reachable

    if Path(name).is_dir():
        found = (Path(name) / _PROCESSOR_FILE).is_file()
    else:
        cached = try_to_load_from_cache(name, _PROCESSOR_FILE)
        found = isinstance(cached, str)
        if cached is None:  # the cache does not know: ask the hub, which knows
            if not hub_reachable():
                raise HeatmapError(f"the image processor of {name} is not in the local Hugging Face cache and could "
                                   f"not be downloaded (offline); download the repo once with network access "
                                   f"(`hf download {name}`), or pass a local directory saved with save_pretrained")
            try:
                hf_hub_download(name, _PROCESSOR_FILE)
                found = True
            except EntryNotFoundError:
                found = False
    if not found:
        return None
    import transformers

    return _from_pretrained(transformers.AutoImageProcessor, name, "the image processor")


def image_transform(model: Any, name: str, processor: Any = None) -> Any:
    """The model's eval transform: from ``processor`` (or its ``image_processor``); else, for a model object,
    the one saved with it (found by its ``name_or_path``); else its family's default image processor.

    Raises:
        UsageError: a model object whose saved image processor cannot be had (pass ``processor=``).
    """
    from heatmap.models.hf.preprocess import transform_from_processor

    processor = getattr(processor, "image_processor", processor)
    if not hasattr(processor, "do_resize"):  # None, or a tokenizer: no image settings in it
        source = str(getattr(model, "name_or_path", "") or "")
        try:
            processor = saved_image_processor(source) if is_hf_name(source) else None
        except HeatmapError as error:
            raise UsageError(f"{error}; or pass processor= (its processor or image processor)") from None
    if processor is None:
        processor = default_image_processor(model)
    return transform_from_processor(processor, name)


def default_image_processor(model: Any) -> Any:
    """The family's image processor with its own defaults, scaled to the model's image size (none was saved)."""
    import transformers

    config = getattr(model.config, "vision_config", model.config)
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    square = {"height": size, "width": size}
    kind = type(model).__name__
    if kind == "CLIPModel":
        return transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size=square)
    if kind == "SiglipModel":
        return transformers.SiglipImageProcessor(size=square)
    if kind.startswith("DeiT"):  # DeiT's own: resize to 256, centre crop 224, at this model's size
        resized = round(size * 256 / 224)
        return transformers.DeiTImageProcessor(size={"height": resized, "width": resized}, crop_size=square)
    return transformers.ViTImageProcessor(size=square)


def tokenizer_of(model: Any, name: str, processor: Any = None) -> Any:
    """An image-text model's tokenizer: ``processor``'s (or ``processor`` itself, when it is a tokenizer), else
    the one saved with the model (found by its ``name_or_path``).

    Raises:
        UsageError: none is found.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    if hasattr(tokenizer, "decode") and hasattr(tokenizer, "convert_ids_to_tokens"):
        return tokenizer
    source = str(getattr(model, "name_or_path", "") or "")
    if is_hf_name(source):
        import transformers

        vocabulary = int(model.config.text_config.vocab_size)
        try:
            with quiet_transformers():
                found = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
            if 2 * len(found) >= vocabulary:  # not one built from the config alone
                return found
        except (OSError, ValueError, ImportError):
            pass
    raise UsageError(f"{name}: no tokenizer was found for this model object; pass processor= (its processor or "
                     "tokenizer)")


def weights_digest(name: str) -> str | None:
    """A ``save_pretrained`` directory's weights, by their file's sha256 (a repo id's name says it: None)."""
    from heatmap.models.checkpoints import file_digest

    if not Path(name).is_dir():
        return None
    for filename in _WEIGHT_FILES:
        if (Path(name) / filename).is_file():
            return file_digest(Path(name) / filename)
    return None
