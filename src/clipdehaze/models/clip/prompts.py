"""Prompt sets: the text side of the CLIP prior, kept as data.

A prompt set is a list of classes, each with one or more prompts. Two spellings are accepted (YAML or dict):

``{"template": "a photo of a {}", "classes": ["indoor", "outdoor"]}``
    every class name is put into the template (``template`` may also be a list of templates, which are
    ensembled);
``{"classes": {"hazy": ["a hazy photo.", ...], "clear": ["a clear photo.", ...]}}``
    the prompts of every class are written out.

A class's text embedding is the mean of its prompts' unit text embeddings, renormalised (CLIP's prompt
ensembling); with one prompt per class this is just that prompt's unit embedding, which is what MixCLDehazeNet
feeds its generator.

The shipped sets live in ``conf/prompts/<name>.yaml`` (one file per set, also a Hydra config group, so a run's
saved config records the exact prompts it used): ``domain`` (MixCLDehazeNet's indoor/outdoor), ``weather``
(clear/haze/rain/snow/raindrop) and ``haze_level`` (hazy/clear antonym pairs for the density map). Python callers
name them and :func:`load_prompt_set` reads the same files, so there is one source of truth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from clipdehaze.utils.resources import project_dir

BUILTIN_PROMPT_SETS = ("domain", "weather", "haze_level")


@dataclass(frozen=True)
class PromptSet:
    """Named classes and the prompts of each (``prompts[i]`` belongs to ``classes[i]``)."""

    name: str
    classes: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"prompt set {self.name!r} needs at least two classes, got {list(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"prompt set {self.name!r} repeats a class: {list(self.classes)}")
        if len(self.prompts) != len(self.classes) or any(not p for p in self.prompts):
            raise ValueError(f"prompt set {self.name!r}: every class needs at least one prompt")

    @property
    def flat_prompts(self) -> list[str]:
        """All prompts, class after class (the order :meth:`class_slices` refers to)."""
        return [p for group in self.prompts for p in group]

    def class_slices(self) -> list[slice]:
        """For each class, the slice of :attr:`flat_prompts` holding its prompts."""
        out, start = [], 0
        for group in self.prompts:
            out.append(slice(start, start + len(group)))
            start += len(group)
        return out

    def index(self, class_name: str) -> int:
        try:
            return self.classes.index(class_name)
        except ValueError:
            raise KeyError(f"class {class_name!r} not in prompt set {self.name!r} {list(self.classes)}") from None

    @property
    def digest(self) -> str:
        """sha256 of the classes and prompts: the text side's part of every cache key."""
        blob = json.dumps({"classes": self.classes, "prompts": self.prompts}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> "PromptSet":
        """Build from either spelling described in the module docstring."""
        spec = as_plain(spec)
        unknown = set(spec) - {"template", "classes"}
        if unknown:
            raise ValueError(f"prompt set {name!r}: unknown keys {sorted(unknown)} (expected 'classes', 'template')")
        classes = spec.get("classes")
        template = spec.get("template")
        if isinstance(classes, Mapping):
            if template is not None:
                raise ValueError(f"prompt set {name!r}: give a template OR explicit prompts per class, not both")
            names = tuple(str(c) for c in classes)
            prompts = tuple(tuple(_as_str_list(classes[c], f"{name}.classes.{c}")) for c in classes)
        elif isinstance(classes, Sequence) and not isinstance(classes, str):
            if template is None:
                raise ValueError(f"prompt set {name!r}: a list of classes needs a 'template' "
                                 "such as 'a photo of a {}'")
            templates = _as_str_list(template, f"{name}.template")
            for t in templates:
                if t.count("{}") != 1:
                    raise ValueError(f"prompt set {name!r}: template {t!r} must contain exactly one '{{}}'")
            names = tuple(str(c) for c in classes)
            prompts = tuple(tuple(t.format(c) for t in templates) for c in names)
        else:
            raise ValueError(f"prompt set {name!r}: 'classes' must be a list of names or a mapping class -> prompts")
        return cls(name=name, classes=names, prompts=prompts)


def as_plain(obj: Any) -> Any:
    """OmegaConf containers (what Hydra passes) -> plain dicts/lists."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def options_from_mapping(cls: type, options: Mapping[str, Any] | None, what: str):
    """Build the options dataclass ``cls`` from a mapping, naming unknown keys and the valid ones."""
    options = dict(options or {})
    unknown = set(options) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} options {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
    return cls(**options)


def _as_str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{where}: expected a prompt string or a non-empty list of prompt strings, got {value!r}")


def prompts_dir() -> Path:
    """``conf/prompts`` of the checkout when running from a source tree, else the copy shipped in the wheel."""
    return project_dir("conf") / "prompts"


def load_prompt_set(name: str) -> PromptSet:
    """Read ``conf/prompts/<name>.yaml``."""
    path = prompts_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in prompts_dir().glob("*.yaml"))
        raise KeyError(f"no prompt set {name!r} in {prompts_dir()} (known: {known}); pass its spec as a dict instead")
    return PromptSet.from_spec(name, OmegaConf.load(path))


def resolve_prompt_sets(prompts: Any) -> dict[str, PromptSet]:
    """Normalise the ``prompts`` argument of :class:`FrozenCLIP`.

    Accepts a list of shipped set names, or a mapping ``name -> spec`` where a spec is a dict (either spelling),
    the name of a shipped set (an alias), or ``None`` (the shipped set of that name).
    """
    prompts = as_plain(prompts)
    if prompts is None:
        prompts = list(BUILTIN_PROMPT_SETS)
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Mapping):
        out = {}
        for name, spec in prompts.items():
            if spec is None:
                out[name] = load_prompt_set(name)
            elif isinstance(spec, str):
                out[name] = dataclasses.replace(load_prompt_set(spec), name=name)
            else:
                out[name] = PromptSet.from_spec(name, spec)
        return out
    if isinstance(prompts, Sequence):
        return {name: load_prompt_set(name) for name in prompts}
    raise TypeError(f"prompts must be a list of set names or a mapping name -> spec, got {type(prompts).__name__}")
