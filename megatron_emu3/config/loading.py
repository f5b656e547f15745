"""Resolve a run's configuration: defaults < preset < YAML recipe (``base:`` chain) < overrides.

A recipe is YAML whose top-level keys mirror `schema.Config`; ``base: other.yaml`` (relative to the
recipe) is loaded first and deep-merged under it. Overrides are ``section.key=value`` strings whose
values are parsed as YAML scalars (``parallel.tp=2``, ``checkpoint.load_weights_from=null``).
Unknown keys anywhere are errors naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from megatron_emu3.config.presets import model_preset
from megatron_emu3.config.schema import Config


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what to do."""


def load_recipe(path: str | os.PathLike, _seen: Optional[list] = None) -> dict:
    """Load a YAML recipe and its ``base:`` chain into one merged dict."""
    path = Path(path).resolve()
    seen = _seen or []
    if path in seen:
        raise ConfigError(f"recipe {path}: 'base:' chain loops back to itself ({' -> '.join(map(str, seen))})")
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; pass --config with a YAML file (see examples/recipes/)")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: top level must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    _resolve_relative_paths(data, path.parent)
    if base is None:
        return data
    return deep_merge(load_recipe(path.parent / base, seen + [path]), data)


def _resolve_relative_paths(data: dict, recipe_dir: Path) -> None:
    """Data source prefixes (one or a list) written relative are relative to the recipe file that
    names them; ``${VARS}`` are expanded first. A prefix naming an unset variable is kept as written,
    so the data loader's error shows it."""

    def resolve(prefix):
        if not isinstance(prefix, str):
            return prefix
        prefix = os.path.expandvars(prefix)
        if "$" not in prefix and not os.path.isabs(prefix) and not prefix.startswith("./"):
            prefix = str(recipe_dir / prefix)
        return prefix

    for source in (data.get("data") or {}).get("sources") or []:
        if isinstance(source, dict) and "prefix" in source:
            prefix = source["prefix"]
            source["prefix"] = [resolve(p) for p in prefix] if isinstance(prefix, list) else resolve(prefix)


def _expand_path_vars(obj: Any) -> None:
    """Expand ``${VARS}`` in every path field (schema `path_field`) of the resolved tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _expand_path_vars(value)
        elif isinstance(value, list):
            for item in value:
                if dataclasses.is_dataclass(item):
                    _expand_path_vars(item)
            if f.metadata.get("path"):
                setattr(obj, f.name, [os.path.expandvars(v) if isinstance(v, str) else v for v in value])
        elif f.metadata.get("path") and isinstance(value, str):
            setattr(obj, f.name, os.path.expandvars(value))


def deep_merge(base: dict, top: dict) -> dict:
    """Merge `top` over `base`, recursing into mappings; lists and scalars are replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: Iterable[str]) -> dict:
    """``["a.b=1", "seed=3"]`` -> ``{"a": {"b": 1}, "seed": 3}``."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. parallel.tp=2)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value  # checked by validation (e.g. a prefix: a path or a list of paths)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    expected = hint if isinstance(hint, type) else typing.get_origin(hint)
    if expected is not None and not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {getattr(expected, '__name__', expected)}, got {value!r}")
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    return value


def _apply(obj: Any, values: dict, where: str, origin: str) -> None:
    """Set dataclass fields of `obj` from `values`, recursing into nested sections and lists of them."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(
                f"unknown config key {path!r} (from {origin}); valid keys here: {sorted(names)}"
            )
        current = getattr(obj, key)
        item_type = _list_item_dataclass(hints[key])
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} (from {origin}) is a section; give a mapping, got {value!r}")
            _apply(current, value, path, origin)
        elif item_type is not None:
            if not isinstance(value, list):
                raise ConfigError(f"{path} (from {origin}): expected a list of mappings, got {value!r}")
            items = []
            for i, entry in enumerate(value):
                if not isinstance(entry, dict):
                    raise ConfigError(f"{path}[{i}] (from {origin}): expected a mapping with keys "
                                      f"{[f.name for f in dataclasses.fields(item_type)]}, got {entry!r}")
                item = item_type()
                _apply(item, entry, f"{path}[{i}]", origin)
                items.append(item)
            setattr(obj, key, items)
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{path} (from {origin})"))


def _list_item_dataclass(hint: Any):
    """The dataclass of a ``list[SomeDataclass]`` field, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def resolve_config(recipe: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """Build the run's `Config`; call `validation.validate_config` on it before use."""
    recipe_data = load_recipe(recipe) if recipe else {}
    override_data = parse_overrides(overrides)
    merged = deep_merge(recipe_data, override_data)
    cfg = Config()
    preset = merged.get("preset")
    if preset is not None:
        _apply(cfg.model, model_preset(preset), "model", f"preset {preset!r}")
    _apply(cfg, recipe_data, "", f"recipe {recipe}")
    _apply(cfg, override_data, "", "command line")
    _expand_path_vars(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain-dict form of a config (what config.yaml holds)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (loadable again with `resolve_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
    os.replace(tmp, path)


def resolve_dataclass(root: Any, recipe: Optional[str] = None, overrides: Iterable[str] = ()) -> Any:
    """Fill any dataclass tree `root` from a recipe (``base:`` chain) and key=value overrides, with the
    same strict unknown-key and type errors as `resolve_config` (used by config trees of other tasks)."""
    _apply(root, load_recipe(recipe) if recipe else {}, "", f"recipe {recipe}")
    _apply(root, parse_overrides(overrides), "", "command line")
    return root
