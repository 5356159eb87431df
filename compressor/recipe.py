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

from compressor.config import Recipe, safe_yaml
from compressor.errors import UserError


class RecipeError(UserError):
    """A recipe that does not validate; the message names the file and every bad key."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__("", message, hint)


MAX_RECIPE_BYTES = 1 << 20
def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The first line of a YAML error plus where it is, e.g. 'found unknown tag !!python/object (line 2)'."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML) to raw recipe data."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item}: expected KEY.PATH=VALUE, e.g. --set prune.ratio=0.75")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item}: {part} is not a section")
        try:
            node[leaf] = safe_yaml(raw)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item}: not a plain YAML value ({_yaml_problem(exc)})") from None
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: {path.stat().st_size:,} bytes is too big for a recipe "
                              f"(at most {MAX_RECIPE_BYTES:,})")
        data = safe_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a folder, not a recipe file") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of stages, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{path}: invalid recipe:\n{format_errors(exc)}") from None
    _check_family(path, recipe.model.family)
    return recipe


def _check_family(path: Path, family: str) -> None:
    """The schema keeps family names as strings (it cannot import the models); the registry judges them here."""
    from compressor.models.registry import family_names

    if family not in family_names():
        raise RecipeError(f"{path}: invalid recipe:\n  model.family: unknown family {family!r}; "
                          f"registered: {', '.join(family_names())}")


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            model = _model_at(err["loc"][:-1])
            if model is not None:
                msg += f"; allowed keys: {', '.join(model.model_fields)}"
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")  # a recipe-wide check names its keys itself
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
