"""What the sentence-transformers files next to the weights say about the pipeline.

modules.json (the module chain), 1_Pooling/config.json (pooling modes, include_prompt), each
Dense module's config.json (a linear projection of the pooled vector: EmbeddingGemma's 768 -> 3072 -> 768;
its weights are read by models/dense.py),
sentence_bert_config.json (max_seq_length, do_lower_case) and config_sentence_transformers.json
(prompts, default_prompt_name). A Normalize module is noted but never decides normalisation:
only the `normalize` argument does (DESIGN.md, "One contract").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit.errors import ModelLoadError
from embedkit.models.pooling import check_modes

__all__ = ["DENSE_ACTIVATIONS", "DenseSpec", "PipelineFiles", "read_json", "read_pipeline_files"]

# legacy boolean keys of 1_Pooling/config.json, in sentence-transformers' concatenation order
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


# sentence-transformers' Dense `activation_function` (a torch.nn class path) -> embedkit's name for it
DENSE_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}


@dataclass(frozen=True)
class DenseSpec:
    """One sentence-transformers Dense module: y = activation(x @ W.T + b), applied to the pooled vector."""

    path: Path  # the module's folder (config.json, model.safetensors or pytorch_model.bin)
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a DENSE_ACTIVATIONS value


@dataclass(frozen=True)
class PipelineFiles:
    pooling_modes: tuple[str, ...] | None = None  # None: no pooling config, use the family default
    include_prompt: bool = True
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    has_normalize: bool = False
    dense: tuple[DenseSpec, ...] = ()  # in pipeline order, after pooling


def read_json(path: Path) -> Any:
    """Parse a JSON file, or raise ModelLoadError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read JSON ({exc})") from exc


def _pooling_modes(path: Path) -> tuple[tuple[str, ...], bool]:
    raw = read_json(path)
    if "pooling_mode" in raw:
        value = raw["pooling_mode"]
        modes = (value,) if isinstance(value, str) else tuple(value)
    else:
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if raw.get(key))
    return check_modes(modes, str(path)), bool(raw.get("include_prompt", True))


def _positive_int(raw: dict[str, Any], key: str, path: Path) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelLoadError(f"{path}: {key} must be a positive int, got {value!r}")
    return value


def _dense(folder: Path) -> DenseSpec:
    """A Dense module's config.json, as sentence-transformers (>= 2) saves it; ModelLoadError naming the file."""
    path = folder / "config.json"
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    n_in, n_out = _positive_int(raw, "in_features", path), _positive_int(raw, "out_features", path)
    # sentence-transformers' Dense defaults to Tanh when the key is absent
    name = raw.get("activation_function", "torch.nn.modules.activation.Tanh")
    if name not in DENSE_ACTIVATIONS:
        raise ModelLoadError(
            f"{path}: activation_function {name!r} is not implemented by embedkit; "
            f"known: {', '.join(DENSE_ACTIVATIONS)}"
        )
    if raw.get("use_residual"):
        raise ModelLoadError(f"{path}: use_residual is not implemented by embedkit")
    for key in ("module_input_name", "module_output_name"):
        if raw.get(key) not in (None, "sentence_embedding"):
            raise ModelLoadError(f"{path}: {key} {raw[key]!r} is not implemented (only 'sentence_embedding')")
    return DenseSpec(folder, n_in, n_out, bool(raw.get("bias", True)), DENSE_ACTIVATIONS[name])


def read_pipeline_files(model_dir: Path) -> PipelineFiles:
    """Read the sentence-transformers files in `model_dir`; absent files give defaults."""
    pooling_modes: tuple[str, ...] | None = None
    include_prompt = True
    has_normalize = False
    dense: list[DenseSpec] = []
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        modules = read_json(modules_path)
        if not isinstance(modules, list):
            raise ModelLoadError(f"{modules_path}: expected a list of modules")
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Transformer":
                continue
            if kind == "Pooling":
                pooling_path = model_dir / module.get("path", "1_Pooling") / "config.json"
                if pooling_path.is_file():
                    pooling_modes, include_prompt = _pooling_modes(pooling_path)
            elif kind == "Normalize":
                has_normalize = True
            elif kind == "Dense":
                if has_normalize:  # embedkit normalises last, once (embedder.postprocess)
                    raise ModelLoadError(f"{modules_path}: a Dense module after Normalize is not implemented")
                dense.append(_dense(model_dir / str(module.get("path", ""))))
            else:
                raise ModelLoadError(
                    f"{modules_path}: module {module.get('type')!r} is not implemented by embedkit; "
                    "skipping it would give different vectors than sentence-transformers"
                )
    elif (model_dir / "1_Pooling" / "config.json").is_file():
        pooling_modes, include_prompt = _pooling_modes(model_dir / "1_Pooling" / "config.json")

    max_seq_length = None
    do_lower_case = False
    bert_config = model_dir / "sentence_bert_config.json"
    if bert_config.is_file():
        raw = read_json(bert_config)
        max_seq_length = raw.get("max_seq_length")
        do_lower_case = bool(raw.get("do_lower_case", False))

    prompts: dict[str, str] = {}
    default_prompt_name = None
    st_config = model_dir / "config_sentence_transformers.json"
    if st_config.is_file():
        raw = read_json(st_config)
        prompts = {str(k): str(v) for k, v in (raw.get("prompts") or {}).items()}
        default_prompt_name = raw.get("default_prompt_name") or None
        if default_prompt_name is not None and default_prompt_name not in prompts:
            raise ModelLoadError(f"{st_config}: default_prompt_name {default_prompt_name!r} is not in prompts")
    return PipelineFiles(
        pooling_modes=pooling_modes,
        include_prompt=include_prompt,
        max_seq_length=max_seq_length,
        do_lower_case=do_lower_case,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        has_normalize=has_normalize,
        dense=tuple(dense),
    )
