"""Finding a masking strategy by name and building it from user options.

A name resolves, in this order, to

1. a built-in strategy (``token``, ``wwm``, ``entity_wwm``, ``span``, ``ngram``);
2. an entry point of that name in the group ``academic_bert.masking``, declared by an installed package::

       [options.entry_points]
       academic_bert.masking =
           random_word = my_package.strategies:RandomWordMasking

3. an import path ``package.module:Class``.

Options come as a mapping (``masking: {name: ..., args: {...}}`` in the run config) or as JSON/YAML text
(``--masking-args '{"mask_prob": 0.2}'``, :func:`parse_masking_args`). Every mistake raises
:class:`~framework.masking.base.MaskingConfigError` when the run starts, naming what is available.
"""

from __future__ import annotations

import importlib
import json
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Mapping

import yaml

from framework.masking.base import MaskingConfigError, MaskingContext, MaskingStrategy
from framework.masking.entity_wwm import EntityWholeWordMasking
from framework.masking.ngram import NgramMasking
from framework.masking.span import SpanMasking
from framework.masking.token_mlm import TokenMasking
from framework.masking.wwm import WholeWordMasking

ENTRY_POINT_GROUP = "academic_bert.masking"
DEFAULT_STRATEGY = "entity_wwm"

BUILTIN_STRATEGIES: dict[str, type[MaskingStrategy]] = {
    cls.name: cls for cls in (TokenMasking, WholeWordMasking, EntityWholeWordMasking, SpanMasking, NgramMasking)
}


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_strategies() -> dict[str, str]:
    """Every strategy name that resolves without an import path, with where it comes from.

    Returns:
        ``{name: origin}``; origin is ``"built-in"`` or ``"entry point <module:attr> (<distribution> <version>)"``.
    """
    found = {name: "built-in" for name in BUILTIN_STRATEGIES}
    for name, ep in _entry_points().items():
        if name in found:
            continue  # a plugin cannot shadow a built-in; resolve_strategy says the same
        dist = getattr(ep, "dist", None)
        source = f" ({dist.name} {dist.version})" if dist is not None else ""
        found[name] = f"entry point {ep.value}{source}"
    return found


def _available_text() -> str:
    return ", ".join(f"{name} [{origin}]" for name, origin in available_strategies().items())


def _check_class(obj: object, where: str) -> type[MaskingStrategy]:
    if not (isinstance(obj, type) and issubclass(obj, MaskingStrategy)):
        raise MaskingConfigError(
            f"{where} is {obj!r}, not a subclass of framework.masking.MaskingStrategy; "
            "point it at your strategy class (see docs/masking.md)"
        )
    return obj


def resolve_strategy(name: str) -> type[MaskingStrategy]:
    """The strategy class for ``name`` (built-in, entry point, or ``package.module:Class``)."""
    if not isinstance(name, str) or not name.strip():
        raise MaskingConfigError(f"masking strategy name {name!r} is empty; available: {_available_text()}")
    name = name.strip()
    if name in BUILTIN_STRATEGIES:
        return BUILTIN_STRATEGIES[name]
    eps = _entry_points()
    if name in eps:
        try:
            loaded = eps[name].load()
        except Exception as err:  # any import error in a plugin must say which plugin
            raise MaskingConfigError(
                f"masking strategy {name!r}: entry point {eps[name].value} in group {ENTRY_POINT_GROUP} "
                f"failed to load: {type(err).__name__}: {err}"
            ) from err
        return _check_class(loaded, f"entry point {name!r} ({eps[name].value})")
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise MaskingConfigError(
                f"masking strategy {name!r}: cannot import module {module_name!r} ({err}); "
                "is the package installed or on PYTHONPATH?"
            ) from err
        if not hasattr(module, attr):
            raise MaskingConfigError(f"masking strategy {name!r}: module {module_name!r} has no attribute {attr!r}")
        return _check_class(getattr(module, attr), name)
    raise MaskingConfigError(
        f"unknown masking strategy {name!r}; available: {_available_text()}; "
        "or give a class as package.module:Class"
    )


def build_strategy(name: str, args: Mapping[str, Any] | None, context: MaskingContext) -> MaskingStrategy:
    """Resolve ``name`` and build the strategy with options ``args`` (``None`` for all defaults).

    Raises:
        MaskingConfigError: unknown name, unknown option, or a value its options reject.
    """
    cls = resolve_strategy(name)
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise MaskingConfigError(f"masking args for {name!r} must be a mapping of option names to values; got {args!r}")
    bad_keys = [k for k in args if not isinstance(k, str)]
    if bad_keys:
        raise MaskingConfigError(f"masking args for {name!r}: option names must be strings; got {bad_keys!r}")
    try:
        return cls(context, **dict(args))
    except MaskingConfigError:
        raise
    except (TypeError, ValueError) as err:  # third-party strategies validating their own way
        raise MaskingConfigError(f"masking strategy {name!r} rejected its options {dict(args)!r}: {err}") from err


def parse_masking_args(text: str | None) -> dict[str, Any]:
    """Parse ``--masking-args``: a JSON or YAML mapping (``'{"mask_prob": 0.2}'`` or ``'mask_prob: 0.2'``).

    Empty text gives ``{}``.
    """
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise MaskingConfigError(
                f"--masking-args {text!r} is neither JSON nor YAML ({err}); "
                'write a mapping such as \'{"mask_prob": 0.2}\''
            ) from err
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MaskingConfigError(
            f"--masking-args {text!r} must be a mapping of option names to values, such as "
            f'\'{{"mask_prob": 0.2}}\'; got a {type(value).__name__}'
        )
    return value
