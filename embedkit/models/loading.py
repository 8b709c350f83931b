"""Putting a checkpoint's tensors into a family's module, by name, strictly.

Each family file declares the prefixes its checkpoints use, the tensors to ignore and the renames
from published names to its attribute names; this module applies them and refuses any missing,
unexpected or mis-shaped tensor, naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from embedkit.errors import ModelLoadError

__all__ = ["TensorLayout", "assign_weights", "check_heads", "config_from_dict"]

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT")
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def config_from_dict(
    cls: type[ConfigT], raw: Mapping[str, Any], source: str, *, defaults: Mapping[str, Any] | None = None
) -> ConfigT:
    """Build a family's config dataclass from config.json, naming any missing required field.

    A key config.json lacks (or sets to null) takes the family's `defaults`, else the dataclass
    default; which fields were filled so is logged once, here, at info level.
    """
    known = dataclasses.fields(cls)  # type: ignore[arg-type]
    given = {f.name: raw[f.name] for f in known if raw.get(f.name) is not None}
    absent = [f.name for f in known if f.default is dataclasses.MISSING and f.name not in given]
    absent = [name for name in absent if (defaults or {}).get(name) is None]
    if absent:
        raise ModelLoadError(f"{source}: missing required field(s): {', '.join(absent)}")
    filled = {f.name: (defaults or {}).get(f.name, f.default) for f in known if f.name not in given}
    if filled:
        assumed = ", ".join(f"{name}={value!r}" for name, value in filled.items())
        log.info("%s: not set, so assumed: %s", source, assumed)
    return cls(**given, **filled)


def check_heads(hidden_size: int, num_attention_heads: int) -> None:
    """Attention splits the hidden size evenly into heads; a config where it cannot is refused."""
    if hidden_size % num_attention_heads:
        raise ModelLoadError(
            f"config.json: hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
        )


def _template_regex(template: str) -> re.Pattern[str]:
    # "encoder.layer.{n}.output." -> ^encoder\.layer\.(?P<n>\d+)\.output\.
    return re.compile("^" + re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)"))


def _swap_prefix(name: str, pattern: re.Pattern[str], template: str) -> str | None:
    match = pattern.match(name)
    if match is None:
        return None
    replacement = template.format(**match.groupdict())
    return replacement + name[match.end() :]


@dataclass(frozen=True)
class TensorLayout:
    """How one family's published tensor names map onto its module.

    `anchor` is a tensor every checkpoint of the family has; the prefix (from `prefixes`) under
    which it is found is stripped from every name. `renames` are named groups ("embeddings",
    "attention", "mlp", ...) of (published, ours) name prefixes, `{n}` standing for a layer number,
    so that a related family reuses a group by name; the first match wins, in either direction,
    groups in their order.
    """

    anchor: str
    prefixes: Sequence[str] = ("",)
    ignore: Sequence[str] = ()  # regexes on names after prefix stripping
    renames: Mapping[str, Sequence[tuple[str, str]]] = field(default_factory=dict)

    def rename_pairs(self) -> Iterator[tuple[str, str]]:
        """Every (published, ours) pair, group after group."""
        for group in self.renames.values():
            yield from group

    def find_prefix(self, names: Sequence[str]) -> str | None:
        present = set(names)
        for prefix in self.prefixes:
            if prefix + self.anchor in present:
                return prefix
        return None

    def rename(self, name: str) -> str | None:
        """Our attribute path for a published name without its prefix; None when ignored."""
        if any(re.fullmatch(pattern, name) for pattern in self.ignore):
            return None
        for published, ours in self.rename_pairs():
            renamed = _swap_prefix(name, _template_regex(published), ours)
            if renamed is not None:
                return renamed
        return name

    def published(self, ours_name: str) -> str:
        """The checkpoint's name (without prefix) for one of our attribute paths."""
        for published, ours in self.rename_pairs():
            original = _swap_prefix(ours_name, _template_regex(ours), published)
            if original is not None:
                return original
        return ours_name


def assign_weights(model: ModuleT, state: dict[str, torch.Tensor], layout: TensorLayout, source: str) -> ModuleT:
    """Load `state` into `model` (built on the meta device) by name; errors name the tensor and `source`."""
    prefix = layout.find_prefix(list(state))
    if prefix is None:
        raise ModelLoadError(
            f"{source}: tensor {layout.anchor!r} not found under any of the prefixes "
            f"{[p or '(none)' for p in layout.prefixes]}; is this checkpoint of the detected family?"
        )
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    for name, tensor in state.items():
        if not name.startswith(prefix):
            if layout.rename(name) is not None:
                unexpected.append(name)
            continue
        ours = layout.rename(name[len(prefix) :])
        if ours is None:
            continue
        mapped[ours] = tensor
        origin[ours] = name
    expected = model.state_dict()
    unexpected += [origin[key] for key in mapped if key not in expected]
    missing = [prefix + layout.published(key) for key in expected if key not in mapped]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(sorted(missing)[:10])}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(
                f"unexpected tensors: {', '.join(sorted(unexpected)[:10])}" + (" ..." if len(unexpected) > 10 else "")
            )
        raise ModelLoadError(f"{source}: checkpoint does not match the model; " + "; ".join(parts))
    for key, target in expected.items():
        if tuple(mapped[key].shape) != tuple(target.shape):
            raise ModelLoadError(
                f"{source}: tensor {origin[key]!r} has shape {tuple(mapped[key].shape)}, "
                f"the config implies {tuple(target.shape)}"
            )
    model.load_state_dict(mapped, strict=True, assign=True)
    return model
