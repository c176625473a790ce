"""Loading transformers models by Hugging Face repo id (cache first) or from a ``save_pretrained`` directory.

A repo id is looked up in the local cache first, with no network; only when
it is not there, and the hub answers, is it downloaded. Offline
(``HF_HUB_OFFLINE=1``, or no network) a model that is not cached gets a
one-line error naming the fix.

Nothing from a model's own files is ever run: every ``from_pretrained`` gets
``trust_remote_code=False``, so a config, tokenizer or processor that names
custom code (``auto_map``) is refused in one line instead of prompting. The
weights must fit the class exactly: a missing, unexpected or reshaped tensor
is an error naming it, never a randomly initialised part explained in silence.
"""

from __future__ import annotations

import json
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
# where transformers reads an image processor's settings: nested under "image_processor" in the processor's file
# (what transformers 5 saves), else the image processor's own file
_PROCESSOR_FILE = "processor_config.json"
_IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
_IMAGE_SETTINGS_FILES = (_PROCESSOR_FILE, _IMAGE_PROCESSOR_FILE)


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


def _from_pretrained(loader: Any, name: str, what: str, usable: Callable[[Any], bool] = lambda _: True,
                     **options: Any) -> Any:
    """``loader.from_pretrained(name, **options)``, never running code from the model's files: the local cache
    first; the hub only when the cached copy is missing or not ``usable`` (transformers builds an empty tokenizer
    from a config when the tokenizer's files are missing)."""
    with quiet_transformers():
        return _cache_first(loader, name, what, usable, {**options, "trust_remote_code": False})


def _custom_code(error: Exception, name: str, what: str) -> UsageError | None:
    """The refusal of a part that needs code from the model's own files (transformers' error says so), or None."""
    if not isinstance(error, ValueError) or "trust_remote_code" not in str(error):
        return None
    return UsageError(f"{name}: {what} needs custom code from the model's own files (auto_map), which vit-heatmap "
                      f"never runs; the transformers classes that are supported: {', '.join(SUPPORTED)}")


def _cache_first(loader: Any, name: str, what: str, usable: Callable[[Any], bool], options: dict[str, Any]) -> Any:
    from heatmap.models.checkpoints import hub_reachable

    if Path(name).is_dir():
        try:
            found = loader.from_pretrained(name, **options)
        except ImportError as error:
            raise _missing_package(name, what, error) from None
        except Exception as error:  # unreadable files of every kind: the user's folder, not a bug here
            raise _custom_code(error, name, what) or HeatmapError(
                f"{name}: {what} could not be read from this folder ({_first_line(error)}); save the model there "
                "with save_pretrained") from None
        if not usable(found):
            raise HeatmapError(f"{name}: this folder has no {what}; save it there with save_pretrained")
        return found
    reason = "offline"
    try:
        found = loader.from_pretrained(name, local_files_only=True, **options)
        if usable(found):
            return found
        reason = "the cached copy is incomplete"
    except ImportError as error:
        raise _missing_package(name, what, error) from None
    except ValueError as error:  # found, but not something transformers can read
        raise _custom_code(error, name, what) or HeatmapError(
            f"{name}: {what} could not be read ({_first_line(error)})") from None
    except OSError as cached_error:
        if "does not appear to have" in str(cached_error):
            reason = _first_line(cached_error)
    if hub_reachable():
        try:
            found = loader.from_pretrained(name, **options)
            if usable(found):
                return found
            reason = "the hub's copy is incomplete"
        except ImportError as error:
            raise _missing_package(name, what, error) from None
        except (OSError, ValueError) as error:
            refusal = _custom_code(error, name, what)
            if refusal:
                raise refusal from None
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
    # mismatched shapes are reported with the missing and unexpected keys rather than raised on their own
    model, loading_info = _from_pretrained(getattr(transformers, arch), name, "the weights",
                                           output_loading_info=True, ignore_mismatched_sizes=True)
    check_weights_fit(loading_info, name, arch)
    model = model.to(device)
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


def check_weights_fit(loading_info: dict[str, Any], name: str, arch: str) -> None:
    """Raise an error naming the keys unless the weights ``from_pretrained`` read fit the class exactly.

    ``loading_info`` is transformers' ``output_loading_info`` report, which already leaves out what a class ties
    or rebuilds itself (tied weights, and the keys each class declares it ignores).

    Raises:
        HeatmapError: a missing, unexpected or reshaped tensor.
    """
    from heatmap.models.checkpoints import fit_problems

    def kept(keys: Any) -> list[str]:
        # position_ids: a buffer rebuilt from the config, which older releases saved with the weights
        return [str(key) for key in keys or () if not str(key).endswith("position_ids")]

    reshaped = [f"{key} {tuple(saved)} vs {tuple(expected)}"
                for key, saved, expected in (tuple(entry)[:3] for entry in loading_info.get("mismatched_keys") or ())]
    problems = fit_problems(kept(loading_info.get("missing_keys")), kept(loading_info.get("unexpected_keys")),
                            reshaped)
    if problems:
        fix = ("save the complete model there with save_pretrained" if Path(name).is_dir()
               else f"download it again with network access (`hf download {name}`)")
        raise HeatmapError(f"{name}: its weights do not fit {arch}: {problems}; {fix}")


def saved_image_processor(name: str) -> Any:
    """The image processor saved with a repo or folder (cache first), or None when it has none.

    Raises:
        HeatmapError: offline, when the cache cannot say whether the repo has one.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from heatmap.models.checkpoints import hub_reachable

    state = _image_settings(name)
    if state == "unknown":  # the cache does not know: ask the hub, which knows
        if not hub_reachable():
            raise HeatmapError(f"the image processor of {name} is not in the local Hugging Face cache and could "
                               f"not be downloaded (offline); download the repo once with network access "
                               f"(`hf download {name}`), or pass a local directory saved with save_pretrained")
        for filename in _IMAGE_SETTINGS_FILES:
            try:
                hf_hub_download(name, filename)
            except EntryNotFoundError:  # recorded in the cache as absent
                pass
        state = _image_settings(name)
    if state != "saved":
        return None
    import transformers

    return _from_pretrained(transformers.AutoImageProcessor, name, "the image processor")


def _image_settings(name: str) -> Literal["saved", "absent", "unknown"]:
    """Whether a folder or cached repo has image settings where transformers reads them: ``unknown`` when the
    cache holds neither file and cannot say whether the repo has them.

    A file the cache records as absent, or that the cached listing of the repo's files (written by
    ``hf download``) does not name, is absent.
    """
    paths: list[str] = []
    unknown = False
    if Path(name).is_dir():
        paths = [str(Path(name) / filename) for filename in _IMAGE_SETTINGS_FILES]
    else:
        from huggingface_hub import try_to_load_from_cache

        listed = _cached_file_list(name)
        for filename in _IMAGE_SETTINGS_FILES:
            cached = try_to_load_from_cache(name, filename)
            if isinstance(cached, str):
                paths.append(cached)
            elif cached is None and (listed is None or filename in listed):
                unknown = True
    if any(_holds_image_settings(path) for path in paths):
        return "saved"
    return "unknown" if unknown else "absent"


def _holds_image_settings(path: str) -> bool:
    """Whether a file transformers reads image settings from holds them (a processor's file may hold none)."""
    if not Path(path).is_file():
        return False
    if Path(path).name != _PROCESSOR_FILE:
        return True
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # unreadable: transformers' own error says why
    return not isinstance(saved, dict) or "image_processor" in saved


def _cached_file_list(name: str) -> set[str] | None:
    """The repo's files as the cache last listed them (``hf download`` keeps the listing), or None."""
    import huggingface_hub

    listing = getattr(huggingface_hub, "get_cached_repo_tree", None)  # recent huggingface_hub releases only
    if listing is None:
        return None
    try:
        return {entry.path for entry in listing(name)}
    except Exception:  # no listing cached (its error class is as new as the function)
        return None


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
                found = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True,
                                                                   trust_remote_code=False)
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
