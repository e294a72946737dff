"""Training recipes: one YAML (or JSON) file per recipe, read into nested dicts, with ``--set section.key=value``
overrides from the command line (values parsed as YAML). The named recipes ship inside the package
(``mslddm/recipes/``, package data, so that ``--config tiny`` works in a non-editable install); ``train/recipes``
in the repository is a link to that folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable

from .recipe_schema import RecipeError, validate

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: the path itself, or ``NAME.{yaml,yml,json}`` among the recipes shipped with mslddm."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for ext in (".yaml", ".yml", ".json"):
        candidate = RECIPE_DIR / f"{name_or_path}{ext}"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in RECIPE_DIR.glob("*.*")) if RECIPE_DIR.is_dir() else []
    raise FileNotFoundError(f"No recipe {str(name_or_path)!r}: not a file, and not one of {known} in {RECIPE_DIR}.")


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_overrides(recipe: dict, overrides: Iterable[str]) -> dict:
    """Returns a copy of ``recipe`` with each ``a.b.c=value`` set (the value parsed as YAML: 3, 1e-4, [1, 2], true)."""
    recipe = copy.deepcopy(recipe)
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"Override {item!r} is not of the form section.key=value.")
        key, value = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override {item!r}: {part!r} is not a section of the recipe.")
        node[leaf] = _parse_value(value)
    return recipe


def merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` laid over it, section by section (a value in ``update`` wins; dicts merge)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] = (), _seen: tuple = ()) -> dict:
    """Reads a recipe and applies overrides; records where it came from under ``recipe["name"]``. A recipe with
    ``base: OTHER`` is OTHER's recipe (a name or a path relative to this file) with this one's values laid over it,
    so that a baseline's recipe says only how it differs."""
    path = recipe_path(name_or_path)
    if path.resolve() in _seen:
        raise ValueError(f"Recipe {path} inherits from itself through 'base'.")
    recipe = _read(path)
    if recipe.get("base"):
        base = recipe.pop("base")
        local = path.parent / str(base)
        parent = load_recipe(local if local.is_file() else base, (), _seen + (path.resolve(),))
        parent.pop("name", None)
        recipe = merge(parent, recipe)
    recipe.setdefault("name", path.stem)
    recipe = apply_overrides(recipe, overrides)
    if not _seen:  # the whole recipe, bases and overrides included, once
        validate(recipe, str(path) + (f" (with --set {' '.join(overrides)})" if overrides else ""))
    return recipe


def _read(path: Path) -> dict:
    """A recipe file's mapping; a syntax error names the file and line."""
    text = path.read_text()
    try:
        if path.suffix == ".json":
            recipe = json.loads(text)
        else:
            import yaml

            recipe = yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise RecipeError(f"Recipe {path} is not valid JSON: {error.msg} at line {error.lineno}.") from None
    except Exception as error:  # yaml.YAMLError; yaml is imported lazily
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"Recipe {path} is not valid YAML{where}: {problem}.") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"Recipe {path} must hold a mapping, got {type(recipe).__name__}.")
    return recipe
