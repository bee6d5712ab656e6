"""Typed flows: what a node's annotations mean, and a flow's JSON Schemas.

A node function's first positional parameter's annotation converts its input
before the call (``validate_python``, lax, as FastAPI does); its return annotation
checks and serialises its output to JSON (``dump_python(mode="json")``), so the
next annotated node gets its declared type back. No annotation, ``Any`` or
``object``: nothing happens, at no cost. Annotations are read once per vertex when
its dag is compiled (:func:`vertex_types`, cached), with their ``TypeAdapter``;
one that cannot be resolved or adapted raises :class:`~aioflow.DefinitionError`.

This is the only module of aioflow that imports pydantic. For the gateway and
other readers: :func:`schemas` gives a flow's input and result JSON Schemas (also
in ``Flow.describe()`` as ``input_schema``/``result_schema`` when not None),
:func:`load_as` validates a JSON value into any type.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

import orjson
from pydantic import (
    PydanticInvalidForJsonSchema,
    PydanticSchemaGenerationError,
    TypeAdapter,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaMode

from aioflow.core.errors import DefinitionError, InvalidInput

__all__ = ["VertexTypes", "load_as", "schemas", "vertex_types"]

# values of these types already are what the annotation names and are stored as they
# are: no adapter call (bytes too: JSON mode would turn them into text; aioflow keeps
# bytes raw)
_NATIVE = (int, str, float, bool, bytes)
_NOTHING = (inspect.Parameter.empty, Any, object)
_JSON = (dict, list, str, int, float, bool, bytes)  # stored as given


class VertexTypes:
    """A node's input and output adapters (``None``: not annotated)."""

    __slots__ = (
        "arg",
        "arg_native",
        "arg_type",
        "ret",
        "ret_mode",
        "ret_native",
        "ret_type",
        "where",
    )

    def __init__(self, where: str, arg_type: Any, ret_type: Any) -> None:
        self.where = where
        self.arg_type = arg_type
        self.ret_type = ret_type
        self.arg = _adapter(where, "input", arg_type)
        self.ret = _adapter(where, "return", ret_type)
        self.arg_native = arg_type if arg_type in _NATIVE else None
        self.ret_native = ret_type if ret_type in _NATIVE else None
        self.ret_mode: Literal["json", "python"] = "python"
        if self.ret is not None and not _stored_as_is(self.ret.core_schema):
            self.ret_mode = "json"

    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of what :meth:`load` accepts (``{}`` when not annotated)."""
        return {} if self.arg is None else _schema(self.arg, "validation")

    def load(self, value: Any) -> Any:
        """``value`` converted into the input annotation; raises :class:`InvalidInput`."""
        if self.arg is None or type(value) is self.arg_native:
            return value
        try:
            return self.arg.validate_python(value)
        except ValidationError as e:
            raise InvalidInput(f"{self.where}: invalid input: {_summary(e)}", errors(e)) from None

    def admit(self, value: Any) -> Any:
        """``value`` as a run's stored input once it converts (:meth:`load`): JSON data
        as given, a typed object (a model instance, a dataclass...) dumped to JSON."""
        loaded = self.load(value)
        if self.arg is None or value is None or isinstance(value, _JSON):
            return value
        return self.arg.dump_python(loaded, mode="json")

    def load_result(self, value: Any) -> Any:
        """A stored output (JSON) of this node as its return annotation's type."""
        return value if self.ret is None else self.ret.validate_python(value)

    def dump(self, out: Any) -> Any:
        """``out`` checked against the return annotation and turned into JSON data;
        a value that does not fit raises pydantic's ``ValidationError``."""
        if self.ret is None or type(out) is self.ret_native:
            return out
        return self.ret.dump_python(self.ret.validate_python(out), mode=self.ret_mode)


# core schema types whose Python values aioflow's codec stores without loss (orjson
# writes datetimes, UUIDs, enums; bytes stay bytes; NaN is refused, naming its path)
_AS_IS = frozenset(
    "any none bool int float str bytes list tuple set frozenset dict literal enum union "
    "nullable default definitions definition-ref tagged-union datetime date time uuid "
    "model model-fields model-field dataclass dataclass-args dataclass-field typed-dict "
    "typed-dict-field".split()
)


def _stored_as_is(schema: Any) -> bool:
    """Whether a type's Python-mode dump is what the codec stores faithfully. Not so
    (Decimal, timedelta, paths, custom serialisers...): JSON mode converts it, bytes
    and NaN in it going as pydantic's JSON mode says (text, null)."""
    if isinstance(schema, list):
        return all(_stored_as_is(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    kind = schema.get("type")
    if isinstance(kind, str) and (kind not in _AS_IS or "serialization" in schema):
        return False
    return all(_stored_as_is(v) for k, v in schema.items() if k != "metadata")


def errors(e: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's error list, JSON-safe (``ctx`` may hold exceptions, ``input`` anything)."""
    out: list[dict[str, Any]] = orjson.loads(e.json(include_url=False))
    return out


def _summary(e: ValidationError) -> str:
    first = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"]) or "input"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def _adapter(where: str, what: str, tp: Any) -> TypeAdapter[Any] | None:
    if any(tp is n for n in _NOTHING):
        return None
    try:
        return TypeAdapter(tp)
    except (PydanticSchemaGenerationError, TypeError, NameError) as e:
        raise DefinitionError(f"{where}: cannot convert its {what} type {tp!r}: {e}") from None


def _annotations(where: str, fn: Callable[..., Any]) -> tuple[Any, Any]:
    """The first positional parameter's annotation and the return annotation,
    resolved; the others' are never evaluated (a ``ctx`` annotation may name a type
    imported only under ``TYPE_CHECKING``)."""
    try:
        sig = inspect.signature(fn)  # unwraps partials, reads a callable's __call__
    except (TypeError, ValueError):  # a builtin or C callable: no annotations to read
        return inspect.Parameter.empty, inspect.Parameter.empty
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    first = next((p for p in sig.parameters.values() if p.kind in positional), None)
    arg = first.annotation if first is not None else inspect.Parameter.empty
    scope = getattr(_code(fn), "__globals__", {})
    return _resolve(where, arg, scope), _resolve(where, sig.return_annotation, scope)


def _code(fn: Any) -> Any:
    """The function whose module the annotations of ``fn`` were written in."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not inspect.isroutine(fn) and not isinstance(fn, type):
        fn = getattr(type(fn), "__call__", fn)  # noqa: B004 - the method, not callable()
    return inspect.unwrap(fn)


def _resolve(where: str, annotation: Any, scope: dict[str, Any]) -> Any:
    if not isinstance(annotation, str):  # resolved already, or empty
        return annotation
    try:
        return eval(annotation, scope)  # what typing.get_type_hints does
    except Exception as e:
        raise DefinitionError(
            f"{where}: cannot resolve its annotation {annotation!r}: {e!r}"
        ) from None


_types: weakref.WeakKeyDictionary[Any, VertexTypes | None] = weakref.WeakKeyDictionary()


def vertex_types(label: str, name: str, vertex: Any) -> VertexTypes | None:
    """The adapters of a node ``vertex`` of the dag ``label`` (cached on the vertex);
    None when it has neither annotation (or is not a node). Raises
    :class:`DefinitionError` naming flow, vertex and type for an annotation that does
    not resolve or that pydantic cannot convert."""
    if vertex.kind != "node" or vertex.fn is None:
        return None
    try:
        return _types[vertex]
    except KeyError:
        pass
    where = f"{label}: node {name!r}"
    arg, ret = _annotations(where, vertex.fn)
    types = VertexTypes(where, arg, ret)
    found = None if types.arg is None and types.ret is None else types
    _types[vertex] = found
    return found


def wait_types(where: str, data_type: Any) -> VertexTypes | None:
    """The adapters of a ``wait`` vertex's ``data_type=`` (None: its data is taken as
    sent): the event's or signal's data is loaded into it and stored as its dump."""
    if data_type is None or data_type in _NOTHING:
        return None
    return VertexTypes(where, data_type, data_type)


# -- a flow's schemas -----------------------------------------------------------------------


class _Graph(Protocol):
    @property
    def vertices(self) -> Mapping[str, Any]: ...

    @property
    def edges(self) -> Iterable[Any]: ...

    def _label(self) -> str: ...


def entry_types(dag: _Graph) -> list[VertexTypes]:
    """The input adapters a run's input meets first: the annotated entry nodes'
    (taking their input as given, so not those with ``aggregate=``), through embedded
    subdags. The engine validates a run's input against each of them at submit."""
    targets = {e.dst for e in dag.edges}
    out: list[VertexTypes] = []
    for name, v in dag.vertices.items():
        if name in targets:
            continue
        if v.kind == "subdag":
            out += entry_types(v.dag)
            continue
        t = vertex_types(dag._label(), name, v)
        if t is not None and t.arg is not None and v.aggregate is None:
            out.append(t)
    return out


def _result_schema(dag: _Graph) -> dict[str, Any] | None:
    sources = {e.src for e in dag.edges}
    exits = [n for n in dag.vertices if n not in sources]
    found = {x: _exit_schema(dag, x) for x in exits}
    if len(exits) == 1:
        return found[exits[0]]
    if all(s is None for s in found.values()):
        return None
    props = {x: s if s is not None else {} for x, s in found.items()}
    return {"type": "object", "properties": props, "required": exits}


def _exit_schema(dag: _Graph, name: str) -> dict[str, Any] | None:
    v = dag.vertices[name]
    if v.kind == "subdag":
        return _result_schema(v.dag)
    t = vertex_types(dag._label(), name, v)
    if t is None or t.ret is None:
        return None
    return _schema(t.ret, "serialization")


def _schema(adapter: TypeAdapter[Any], mode: JsonSchemaMode) -> dict[str, Any]:
    try:
        return adapter.json_schema(mode=mode)
    except PydanticInvalidForJsonSchema:  # convertible, not describable: say "anything"
        return {}


def schemas(flow: _Graph) -> dict[str, dict[str, Any] | None]:
    """``{"input": ..., "result": ...}``: the JSON Schemas of what a run of ``flow``
    takes and gives, None where nothing is annotated. The input's is the first
    annotated entry node's (every entry gets the same input, and submit validates it
    against each of them); the result's is the exit node's return type, or with
    several exits an object with one property per exit (``{}`` for an unannotated
    one). Entries and exits that are subdags are looked through; foreach, branch and
    waiting vertices say nothing."""
    entries = entry_types(flow)
    return {
        "input": _schema(entries[0].arg, "validation") if entries and entries[0].arg else None,
        "result": _result_schema(flow),
    }


def result_types(flow: _Graph) -> VertexTypes | None:
    """The adapters of the flow's single exit node when its return is annotated."""
    sources = {e.src for e in flow.edges}
    exits = [n for n in flow.vertices if n not in sources]
    if len(exits) != 1:
        return None
    t = vertex_types(flow._label(), exits[0], flow.vertices[exits[0]])
    return t if t is not None and t.ret is not None else None


_adapters: dict[Any, TypeAdapter[Any]] = {}


def load_as(tp: Any, value: Any) -> Any:
    """``value`` (JSON data) validated into ``tp``; raises pydantic's ``ValidationError``."""
    try:
        adapter = _adapters.get(tp)
    except TypeError:  # an unhashable type expression
        return TypeAdapter(tp).validate_python(value)
    if adapter is None:
        adapter = _adapters[tp] = TypeAdapter(tp)
    return adapter.validate_python(value)
