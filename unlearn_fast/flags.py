"""Command-line flags generated from a settings dataclass, and the dataclass built back from them.

Every field becomes ``--field-name`` (nested dataclass fields get their field's prefix:
``lacu.lam_pres`` -> ``--lacu-lam-pres``); the flag's type follows the annotation (bool:
``--x/--no-x``; list: several values or commas; ``Literal``: choices; ``Optional``: ``none``
unsets); its help is the field's ``metadata["help"]``. A flag not given keeps the default, and
the dataclass validates the result once (its ``__post_init__``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Callable, Literal, Union


def flag(name: str) -> str:
    return "--" + name.replace("_", "-").replace(".", "-")


def strip_optional(tp):
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Union[tuple(args)]), True
    return tp, False


def scalar_parser(tp, optional: bool) -> Callable[[str], object]:
    """A string -> value converter for one scalar type (the dataclass validates the result)."""

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if tp is int or typing.get_origin(tp) is Union:  # str | int: ints stay ints
            try:
                return int(text)
            except ValueError:
                return text  # the dataclass names the key and the expected type
        if tp is float:
            try:
                return float(text)
            except ValueError:
                return text
        return text

    return parse


def split_list(values: list[str]) -> list[str]:
    out = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _field_default(f: dataclasses.Field, defaults=None):
    """The value a field takes when not given: from ``defaults`` (the enclosing settings'
    default instance) when there is one, else the field's own default or factory."""
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, prefix: str = "", skip=(), help=None,
                            names=None, defaults=None) -> None:
    """One flag per field of ``cls`` (``skip``: field names left out; ``help``: help texts by
    name, else the field's ``metadata["help"]``; ``names``: another flag name for a field;
    ``defaults``: the instance whose values the help shows as defaults, for nested settings
    whose enclosing class sets other defaults than their own)."""
    hints = typing.get_type_hints(cls)
    help, names = help or {}, names or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, optional = strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            add_dataclass_arguments(parser, tp, prefix=f"{prefix}{f.name}.", skip=skip,
                                    defaults=_field_default(f, defaults))
            continue
        dest = prefix + f.name
        text = help.get(f.name, f.metadata.get("help"))
        default = _field_default(f, defaults) if defaults is not None or f.default is not dataclasses.MISSING else None
        if text and default is not None:
            text = f"{text} (default: {default})"
        kwargs = dict(dest=dest, default=argparse.SUPPRESS, help=text)
        name = flag(prefix + names.get(f.name, f.name))
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
        elif origin is list:
            parser.add_argument(name, nargs="+", metavar=f.name.upper(), **kwargs)
        elif origin is Literal:
            choices = list(typing.get_args(tp)) + (["none"] if optional else [])
            parser.add_argument(name, choices=choices, **kwargs)
        else:
            parser.add_argument(name, type=scalar_parser(tp, optional), metavar=f.name.upper(), **kwargs)


def dataclass_overrides(args: argparse.Namespace, cls, *, prefix: str = "", skip=(), list_parsers=None) -> dict:
    """The fields of ``cls`` given on the command line, converted (nested settings as dicts);
    ``list_parsers``: a converter of the raw values of a list field, by name."""
    hints = typing.get_type_hints(cls)
    list_parsers = list_parsers or {}
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, optional = strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            nested = dataclass_overrides(args, tp, prefix=f"{prefix}{f.name}.", skip=skip)
            if nested:
                out[f.name] = nested
            continue
        if not hasattr(args, prefix + f.name):
            continue
        value = getattr(args, prefix + f.name)
        if typing.get_origin(tp) is list:
            if f.name in list_parsers:
                value = list_parsers[f.name](value)
            else:
                (item,) = typing.get_args(tp)
                value = [scalar_parser(item, False)(v) for v in split_list(value)]
        elif value == "none" and optional:
            value = None
        out[f.name] = value
    return out


def build_dataclass(cls, overrides: dict, base=None):
    """``cls`` from ``base`` (default: its defaults) with ``overrides``; nested dicts update
    the nested settings. Validated once per dataclass by its ``__post_init__``."""
    base = base if base is not None else cls()
    values = {}
    for key, value in overrides.items():
        current = getattr(base, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = build_dataclass(type(current), value, current)
        values[key] = value
    return dataclasses.replace(base, **values)
