"""The README's config reference, generated from the schema's field docs.

``python -m settings.reference`` rewrites the section between the README's two markers; a test
keeps it current.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

from settings.loading import _type_name
from settings.schema import Config

def reference_markdown() -> str:
    """The README's config reference, generated from the field docs (tests keep the README current)."""
    lines: list[str] = []
    seen: dict[type, str] = {}
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        _reference(hints[section.name], section.name, lines, seen)
    return "\n".join(lines).strip() + "\n"


def _reference(cls, prefix, lines, seen):
    if cls in seen:
        lines.append(f"\n#### `{prefix}`\n\nSame keys as `{seen[cls]}`.")
        return
    seen[cls] = prefix
    hints = typing.get_type_hints(cls)
    summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    lines.append(f"\n#### `{prefix}`\n\n{summary.replace('``', '`')}\n")
    lines.append("| key | type | default | meaning |\n|---|---|---|---|")
    nested = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or (
            [tp] if dataclasses.is_dataclass(tp) else [])
        if inner:
            default = "see below"
        else:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            default = f"`{json.dumps(value)}`"
        lines.append(f"| `{f.name}` | {_type_name(tp)} | {default} | {f.metadata.get('doc', '')} |")
        nested += [(a, f"{prefix}.{f.name}") for a in inner]
    for cls2, p in nested:
        _reference(cls2, p, lines, seen)


def write_readme_reference(readme: Path = Path(__file__).resolve().parents[1] / "README.md") -> None:
    """Replace the README's generated config reference (between its two markers)."""
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    readme.write_text(head + start + reference_markdown() + end + rest.split(end, 1)[1], encoding="utf-8")


if __name__ == "__main__":  # python -m settings.reference: refresh the README's config reference
    write_readme_reference()
