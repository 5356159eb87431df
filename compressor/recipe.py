"""The YAML recipe: a validated list of stages, each optional (schemas in ``compressor.config``).

Unknown keys are rejected and every error names its key path, e.g.
``prune.ratio: Input should be less than 1``. ``--set prune.ratio=0.75``
overrides work on the raw YAML before validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compressor.config import Recipe


class RecipeError(ValueError):
    """A recipe that does not validate; the message names the file and every bad key."""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML) to raw recipe data."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected KEY.PATH=VALUE")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe not found") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of stages, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{path}: invalid recipe\n{format_errors(exc)}") from None
    _check_family(path, recipe.model.family)
    return recipe


def _check_family(path: Path, family: str) -> None:
    """The schema keeps family names as strings (it cannot import the models); the registry judges them here."""
    from compressor.models.registry import family_names

    if family not in family_names():
        raise RecipeError(f"{path}: invalid recipe\n  model.family: unknown family {family!r}; "
                          f"registered: {', '.join(family_names())}")


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            model = _model_at(err["loc"][:-1])
            if model is not None:
                msg += f"; allowed keys: {', '.join(model.model_fields)}"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found at a key path of Recipe (for listing allowed keys)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model
