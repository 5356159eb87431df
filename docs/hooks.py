"""mkdocs hook: the recipe and CLI references, generated from the pydantic configs and the typer app at build time."""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    text = text or str(annotation)
    for prefix in ("typing.", "compressor.config.", "pathlib."):
        text = text.replace(prefix, "")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, default=str)}`"


def _cell(text: str | None) -> str:
    return (text or "").replace("\n", " ").replace("|", "\\|")


def _fields_table(model: type[BaseModel]) -> list[str]:
    rows = ["| key | type | default | what |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {_cell(field.description)} |")
    return rows


def _sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The config classes a model's fields hold (directly, in a list, or optional), in field order."""
    found = []
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found.append(annotation)
            else:
                stack.extend(typing.get_args(annotation))
    return list(dict.fromkeys(found))


def recipe_reference() -> str:
    from compressor.config import Recipe

    lines = ["## Top level", "", *_fields_table(Recipe)]
    seen: set[type] = {Recipe}
    queue = _sections(Recipe)
    while queue:
        section = queue.pop(0)
        if section in seen:
            continue
        seen.add(section)
        lines += ["", f"## {section.__name__}", "", _cell(section.__doc__), "", *_fields_table(section)]
        queue += _sections(section)
    return "\n".join(lines)


def cli_reference() -> str:
    import click
    import typer

    from styleslim.cli import app

    group = typer.main.get_command(app)
    lines = []
    with click.Context(group) as ctx:
        for name in sorted(group.list_commands(ctx)):
            command = group.get_command(ctx, name)
            lines += [f"## styleslim {name}", "", _cell((command.help or "").split("\n\n")[0]), ""]
            arguments = [p.human_readable_name for p in command.params if isinstance(p, click.Argument)]
            if arguments:
                lines += [f"Arguments: `{' '.join(arguments)}`", ""]
            lines += ["| option | what | default |", "|---|---|---|"]
            for param in command.params:
                if isinstance(param, click.Option) and param.name != "help":
                    flags = ", ".join(f"`{o}`" for o in param.opts + param.secondary_opts)
                    default = "" if param.default is None or param.required else f"`{param.default}`"
                    lines.append(f"| {flags} | {_cell(param.help)} | {default} |")
            lines.append("")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- recipe-reference -->" in markdown:
        markdown = markdown.replace("<!-- recipe-reference -->", recipe_reference())
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    return markdown
