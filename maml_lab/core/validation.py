"""The one validation layer for what a user hands in: TOML configs and the CLI flags written into them, export and
checkpoint metadata, task and algorithm options.

A schema is a dataclass: each field's type hint says what it takes (bool, int, float, str, list[...], dict, X | None)
and `rule(...)` declares its range or choices in `field` metadata. `check_fields` reads both and refuses a bad value
with one line naming where it came from, the key, the value and what was expected:

    config: algorithms.maml.inner_lr = "fast": expected a positive number

bool is not an int (TOML `true` is not 1), 2.5 is not an int, a string is not a list, and a float must be finite.
Hand-written rather than pydantic: the schemas are a few dataclasses the engine already has, the rules are a handful
(type, range, choices, list length), and the messages must read as the TOML the user wrote; a new dependency for
that would buy little. Beside the schema: a memory estimate checked before large allocations (`check_memory`), and
TOML parsing that reports an over-deep document in one line (`parse_toml`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import types
import typing
from dataclasses import dataclass

TOML_MAX_DEPTH = 100  # nesting deeper than this is refused before the parser recurses into it
INT64_MAX = 2 ** 63 - 1


class InputError(ValueError):
    """A value a user handed in is of the wrong type or out of range; the message is the one line to show."""


class TooDeepError(InputError):
    """A document nested deeper than any config is (a hostile one: the parser would recurse until it fails)."""


class MemoryLimitError(InputError):
    """What was asked for needs more memory than the machine has."""


@dataclass(frozen=True)
class Rule:
    """A field's declared range: `min`/`max` inclusive, `above` exclusive (positive numbers: above=0), `choices`
    for strings, `min_items` for lists (the bounds then apply to each item)."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    choices: tuple | None = None
    min_items: int = 0


def rule(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, **bounds):
    """A dataclass field with a declared Rule: `inner_lr: float = rule(0.01, above=0)`."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"rule": Rule(**bounds)})


# -- messages -------------------------------------------------------------------------------------------------------
def show(value, limit: int = 60) -> str:
    """A value as the user wrote it (TOML/JSON spelling: "fast", true, [40.5, 40]), shortened to `limit`."""
    try:
        text = json.dumps(value, default=repr, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    text = text.replace("NaN", "nan").replace("Infinity", "inf")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _type_name(hint) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a text",
            dict: "a table"}.get(hint, getattr(hint, "__name__", str(hint)))


def expectation(hint, r: Rule | None = None) -> str:
    """What a type hint with its rule takes, in words: 'an integer >= 1', 'a positive number', 'one of "a", "b"'."""
    r = r or Rule()
    hint, _ = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(expectation(alternative, r) for alternative in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (typing.Any,)
        inner = expectation(item, dataclasses.replace(r, min_items=0))
        inner = inner.replace("an integer", "integers").replace("a number", "numbers").replace("a text", "texts")
        inner = inner.replace("a positive number", "positive numbers").replace("one of", "each one of")
        text = f"a list of {inner}" + (f" (at least {r.min_items})" if r.min_items > 1 else "")
        if r.min_items == 1:
            text = "a non-empty " + text[2:]
    elif r.choices is not None:
        text = "one of " + ", ".join(show(c) for c in r.choices)
    elif hint in (int, float):
        name = _type_name(hint)
        high = r.max if r.max is not None and r.max < INT64_MAX else None
        if r.above == 0 and high is None:
            text = "a positive number" if hint is float else "a positive integer"
        elif r.min is not None and high is not None:
            text = f"{name} from {r.min:g} to {high:g}"
        else:
            bounds = [f">= {r.min:g}" if r.min is not None else "", f"> {r.above:g}" if r.above is not None else "",
                      f"<= {high:g}" if high is not None else ""]
            text = " ".join([name, *[b for b in bounds if b]])
    else:
        text = _type_name(hint)
    return text


def fail(where: str, key: str, value, expected: str) -> InputError:
    """The one-line error: `where: key = value: expected ...`."""
    prefix = f"{where}: " if where else ""
    return InputError(f"{prefix}{key} = {show(value)}: expected {expected}")


# -- checking values ------------------------------------------------------------------------------------------------
def _unwrap_optional(hint):
    """(hint without None, whether None was allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else functools.reduce(operator.or_, args)), optional
    return hint, False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(where: str, key: str, value, hint, r: Rule | None = None):
    """`value` checked against a type hint and rule; returns it normalized (an int where a float is expected becomes
    a float, a tuple where a list is expected a list). Raises InputError with the one-line message."""
    r = r or Rule()
    inner, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise fail(where, key, value, expectation(hint, r))
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):  # str | list[str]: the first alternative that takes it
        for alternative in typing.get_args(inner):
            try:
                return check_value(where, key, value, alternative, r)
            except InputError:
                continue
        raise fail(where, key, value, expectation(inner, r))
    if inner is bool:
        if not isinstance(value, bool):
            raise fail(where, key, value, "true or false")
        return value
    if inner is int:
        if not _is_int(value) or not _in_range(value, r):
            raise fail(where, key, value, expectation(inner, r))
        return value
    if inner is float:
        if not (_is_int(value) or isinstance(value, float)):
            raise fail(where, key, value, expectation(inner, r))
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise fail(where, key, value, expectation(inner, r)) from None
        if not math.isfinite(number) or not _in_range(number, r):
            raise fail(where, key, value, expectation(inner, r))
        return number
    if inner is str:
        if not isinstance(value, str) or (r.choices is not None and value not in r.choices):
            raise fail(where, key, value, expectation(inner, r))
        return value
    if origin is list or inner is list:
        (item,) = typing.get_args(inner) or (typing.Any,)
        if not isinstance(value, (list, tuple)) or len(value) < r.min_items:
            raise fail(where, key, value, expectation(inner, r))
        item_rule = dataclasses.replace(r, min_items=0)
        return [check_value(where, f"{key}[{i}]", v, item, item_rule) for i, v in enumerate(value)]
    if inner is dict or typing.get_origin(inner) is dict:
        if not isinstance(value, dict):
            raise fail(where, key, value, "a table")
        return value
    return value  # types the schema does not check (nested dataclasses: their own schema checks them)


def _in_range(value, r: Rule) -> bool:
    return ((r.min is None or value >= r.min) and (r.max is None or value <= r.max)
            and (r.above is None or value > r.above))


@functools.cache
def schema(cls) -> dict[str, tuple]:
    """A dataclass's fields: name -> (type hint, Rule)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get("rule", Rule())) for f in dataclasses.fields(cls)}


def check_field(cls, where: str, key: str, value, label: str | None = None):
    """One field of a schema dataclass, checked (the message names it `label`, default its name); returns the
    normalized value."""
    hint, r = schema(cls)[key]
    return check_value(where, label or key, value, hint, r)


def check_fields(obj, where: str, prefix: str = "", skip=()) -> None:
    """Every field of a dataclass instance checked against its type hint and rule, normalized in place."""
    for key, (hint, r) in schema(type(obj)).items():
        if key not in skip:
            setattr(obj, key, check_value(where, prefix + key, getattr(obj, key), hint, r))


def check_like(where: str, key: str, value, default):
    """A declared option (a plug-in's or a task family's) checked against the type of its default: a bool takes
    true/false, an int an integer, a float any finite number, a text a text, a list a list."""
    if default is None:
        return value
    if isinstance(default, bool):
        return check_value(where, key, value, bool)
    if isinstance(default, int):
        return check_value(where, key, value, int)
    if isinstance(default, float):
        return check_value(where, key, value, float)
    if isinstance(default, str):
        return check_value(where, key, value, str)
    if isinstance(default, (list, tuple)):
        return check_value(where, key, value, list)
    if isinstance(default, dict):
        return check_value(where, key, value, dict)
    return value


def check_table(where: str, key: str, value) -> dict:
    """A value that must be a table (a JSON object, a TOML table)."""
    if not isinstance(value, dict):
        raise fail(where, key, value, "a table")
    return value


# -- TOML -----------------------------------------------------------------------------------------------------------
def toml_depth(text: str) -> int:
    """The deepest nesting of arrays and inline tables in TOML text (brackets outside strings and comments); an
    upper bound good enough to refuse a document before the recursive parser sees it."""
    depth = deepest = 0
    quote = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote)
            continue
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return deepest


def parse_toml(text: str, source: str) -> dict:
    """TOML text as a dict; ValueError in one line for invalid or over-deep documents."""
    import tomllib

    if toml_depth(text) > TOML_MAX_DEPTH:
        raise TooDeepError(f"{source} is nested more than {TOML_MAX_DEPTH} levels deep")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source} is not valid TOML: {exc}") from None
    except RecursionError:
        raise TooDeepError(f"{source} is nested too deeply to read") from None


# -- memory ---------------------------------------------------------------------------------------------------------
def total_memory() -> int | None:
    """The memory this process may use at most: the machine's physical memory (os.sysconf), or a smaller container
    limit; None where the system does not say. One definition with the image-set loader's limits."""
    from .tasks.imagelimits import machine_memory

    return machine_memory()


def gigabytes(n: float) -> str:
    """A size for people, in the units every memory message of the lab uses."""
    from .tasks.imagelimits import format_bytes

    return format_bytes(n)


def check_memory(needed: float, what: str, available: int | None = None) -> None:
    """Refuse `what` when the estimate `needed` (bytes) exceeds the machine's memory; estimates err high, so this
    only stops what cannot run, before it is allocated."""
    total = available if available is not None else total_memory()
    if total is not None and needed > total:
        raise MemoryLimitError(f"{what}: this needs about {gigabytes(needed)}; the machine has {gigabytes(total)}")


def mlp_parameters(sizes) -> int:
    """Parameters of a fully connected network with these layer sizes (weights and biases)."""
    sizes = [int(s) for s in sizes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def shapes_numel(shapes) -> int:
    """Elements of a {name: shape} description, without allocating anything."""
    return sum(math.prod(int(s) for s in shape) for shape in shapes.values())


def training_bytes(params: int, activations: float, meta_batch: int, inner_steps: int, val_tasks: int,
                   val_activations: float, algorithms: int = 1, itemsize: int = 4) -> float:
    """A rough estimate of meta-training's peak memory, on the high side. `params`: the model's parameter count;
    `activations`: elements one task's forward pass stores (all its examples), `val_activations` the same for a
    validation task. Each algorithm keeps its parameters with Adam's state (x4); a meta-step keeps every task's
    parameters and activations for each inner step and the query pass; validation adapts `val_tasks` tasks at once.
    Calibrated on conv-4 Omniglot 5-way 1-shot (meta-batch 32, 100 validation tasks): 1.3 GB peak RSS measured,
    3.4 GB estimated."""
    step = meta_batch * (inner_steps + 1) * (params + activations)
    val = val_tasks * (params + val_activations)
    return itemsize * (algorithms * 4 * params + step + val)


def check_training_memory(config, params: int, activations: float, val_activations: float, what: str) -> None:
    """Refuse an ExperimentConfig whose meta-training (estimated by training_bytes) cannot fit in this machine."""
    from .algorithms.registry import ALGORITHMS

    itemsize = 8 if config.dtype == "float64" else 4
    # inner steps deepen the graph of algorithms that adapt by gradient steps; a head fit (Baseline) or prototypes
    # keep none of it (their inner steps are epochs of a fit on detached features, or nothing)
    steps = max([a.inner_steps if a.name not in ALGORITHMS or ALGORITHMS.get(a.name).adaptation_kind == "gradient"
                 else 1 for a in config.algorithms] + [1])
    val_tasks = max(config.val_tasks, 1) if config.val_every else 0
    needed = training_bytes(params, activations, config.meta_batch_size, steps, val_tasks, val_activations,
                            len(config.algorithms), itemsize)
    check_memory(needed, f"config: {what}" + (f", {val_tasks} validation tasks" if val_tasks else ""))


@dataclass
class CheckpointHeader:
    """The keys of a checkpoint's JSON header that decide what is built and restored, with their types (the run's
    own config inside is an ExperimentConfig, checked by its schema when it is read)."""

    format: str
    format_version: int
    iteration: int = rule(0, min=0, max=INT64_MAX)
    config: dict = dataclasses.field(default_factory=dict)
    model: dict = dataclasses.field(default_factory=dict)
    task: dict = dataclasses.field(default_factory=dict)
    runs: dict = dataclasses.field(default_factory=dict)


def check_checkpoint_header(header) -> dict:
    """A checkpoint header's structure and types (InputError naming the key); returns it."""
    check_table("header", "(the whole header)", header)
    for key in schema(CheckpointHeader):
        if key in header:
            check_field(CheckpointHeader, "header", key, header[key])
    return header
