"""agent/ uses OpenTelemetry through its public API only: no underscore-prefixed name of it.

The one exception is the logs API, which OpenTelemetry publishes only under underscore-prefixed
modules (`opentelemetry._logs`, `opentelemetry.sdk._logs`, the OTLP log exporter modules).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent"

# Modules OpenTelemetry publishes only under an underscore-prefixed name.
ALLOWED_MODULES = (
    "opentelemetry._logs",
    "opentelemetry.sdk._logs",
    "opentelemetry.exporter.otlp.proto.grpc._log_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
)
# Underscore-prefixed methods that are public API of the standard library's named tuples.
NAMED_TUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults"})
_ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_module_part(module: str) -> str | None:
    """The first underscore-prefixed component of an opentelemetry module path, if forbidden."""
    if module != "opentelemetry" and not module.startswith("opentelemetry."):
        return None
    rest = module
    for allowed in ALLOWED_MODULES:
        if module == allowed or module.startswith(allowed + "."):
            rest = module[len(allowed) :]
            break
    return next((part for part in rest.split(".") if _private(part)), None)


@dataclass
class _Module:
    """What one agent/ module binds: OpenTelemetry names by alias, and its classes' OTel bases."""

    otel_aliases: dict[str, str] = field(default_factory=dict)  # alias -> dotted otel path
    otel_bases: dict[str, list[str]] = field(default_factory=dict)  # class -> otel base paths
    otel_names: set[str] = field(default_factory=set)  # variables holding an OTel object
    otel_attributes: set[str] = field(default_factory=set)  # attributes holding one


def own_private_names(trees: list[ast.Module]) -> set[str]:
    """Every underscore-prefixed name agent/ itself defines (attributes, methods, functions)."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[0])
    return {name for name in names if _private(name)}


@cache
def otel_private_names(path: str) -> frozenset[str]:
    """Underscore-prefixed names an OpenTelemetry class and its OTel bases define or assign."""
    module_name, _, class_name = path.rpartition(".")
    found = importlib.import_module(module_name)
    klass = getattr(found, class_name)
    names: set[str] = set()
    for base in inspect.getmro(klass):
        if not base.__module__.startswith("opentelemetry"):
            continue
        names.update(name for name in vars(base) if _private(name))
        try:
            source = textwrap.dedent(inspect.getsource(base))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                names.add(node.attr)
    return frozenset(names)


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _bindings(tree: ast.Module) -> _Module:
    bound = _Module()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("opentelemetry"):
                    bound.otel_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            for alias in node.names:
                bound.otel_aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [_otel_path(base, bound) for base in node.bases]
            bound.otel_bases[node.name] = [base for base in bases if base]
        elif isinstance(node, ast.arg) and _mentions_otel(node.annotation, bound):
            bound.otel_names.add(node.arg)
        elif isinstance(node, ast.AnnAssign) and _mentions_otel(node.annotation, bound):
            _bind(node.target, bound)
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and _otel_path(node.value.func, bound)
        ):
            for target in node.targets:
                _bind(target, bound)
    return bound


def _mentions_otel(annotation: ast.expr | None, bound: _Module) -> bool:
    names = [n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)] if annotation else []
    return any(name in bound.otel_aliases for name in names)


def _bind(target: ast.expr, bound: _Module) -> None:
    """Remembers a variable, attribute or dataclass field that holds an OpenTelemetry object."""
    if isinstance(target, ast.Name):
        bound.otel_names.add(target.id)
        bound.otel_attributes.add(target.id)  # a class-body annotation is a field
    elif isinstance(target, ast.Attribute):
        bound.otel_attributes.add(target.attr)


def _otel_path(node: ast.expr, bound: _Module) -> str | None:
    """The dotted OpenTelemetry path an expression such as `trace.Span` names, if it does."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in bound.otel_aliases:
        return None
    return ".".join([bound.otel_aliases[node.id], *parts])


def violations(source: str, filename: str, own: set[str]) -> Iterator[str]:
    """`file:line: what` for every use of an underscore-prefixed OpenTelemetry name."""
    tree = ast.parse(source, filename)
    bound = _bindings(tree)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for module in modules:
                part = private_module_part(module)
                if part:
                    yield f"{where}: imports the private module part {part!r} of {module}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
                for alias in node.names:
                    if _private(alias.name):
                        yield f"{where}: imports the private name {alias.name} from {node.module}"
        elif isinstance(node, ast.ClassDef):
            yield from _class_violations(node, bound, filename)
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue  # a class's own state; what an OTel base defines is checked per class
            root = _root_name(node.value)
            base = node.value
            if root in bound.otel_aliases:
                yield f"{where}: reads {node.attr} of {bound.otel_aliases[root]}"
            elif (isinstance(base, ast.Name) and base.id in bound.otel_names) or (
                isinstance(base, ast.Attribute) and base.attr in bound.otel_attributes
            ):
                yield f"{where}: touches {node.attr} of an OpenTelemetry object"
            elif node.attr not in own and node.attr not in NAMED_TUPLE_API:
                yield f"{where}: touches {node.attr}, which agent/ does not define"
        elif isinstance(node, ast.Call):
            yield from _call_violations(node, bound, where, own)


def _call_violations(node: ast.Call, bound: _Module, where: str, own: set[str]) -> Iterator[str]:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if isinstance(node.func, ast.Attribute):
        name = node.func.attr
    texts = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
    strings = [text for text in texts if isinstance(text, str)]
    attribute = strings[0] if name in _ATTRIBUTE_FUNCTIONS and len(strings) == 1 else ""
    if _private(attribute) and attribute not in own:
        yield f"{where}: {name}() of {attribute}, which agent/ does not define"
    if name in ("import_module", "__import__"):
        for text in strings:
            part = private_module_part(text)
            if part:
                yield f"{where}: imports the private module part {part!r} of {text}"
    if name == "__new__" and isinstance(node.func, ast.Attribute):
        root = _root_name(node.func.value)
        if root in bound.otel_aliases:
            yield f"{where}: builds {bound.otel_aliases[root]} with __new__"


def _class_violations(node: ast.ClassDef, bound: _Module, filename: str) -> Iterator[str]:
    """A subclass of an OTel class must not define, set or read the base's private names."""
    private = set().union(*(otel_private_names(base) for base in bound.otel_bases[node.name]))
    if not private:
        return
    for child in ast.walk(node):
        name = None
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            name = child.name
        elif isinstance(child, ast.Attribute) and _root_name(child) in ("self", "cls"):
            name = child.attr
        elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
            name = child.id
        if name in private:
            yield f"{filename}:{child.lineno}: {node.name} uses {name} of its OpenTelemetry base"


def _agent_sources() -> list[tuple[Path, str]]:
    return [(path, path.read_text()) for path in sorted(AGENT.rglob("*.py"))]


@cache
def _own() -> frozenset[str]:
    return frozenset(own_private_names([ast.parse(text) for _, text in _agent_sources()]))


def _check(source: str) -> list[str]:
    return sorted(violations(textwrap.dedent(source), "scratch.py", set(_own())))


def test_no_module_under_agent_touches_a_private_opentelemetry_name() -> None:
    sources = _agent_sources()
    own = set(_own())
    found = [
        problem
        for path, text in sources
        for problem in violations(text, str(path.relative_to(ROOT)), own)
    ]
    assert not found, "private OpenTelemetry names used:\n" + "\n".join(found)


def test_the_logs_modules_published_only_under_private_names_are_allowed() -> None:
    assert not _check("""
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    """)


def test_a_private_module_or_name_imported_is_named_with_its_line() -> None:
    found = _check("""
        import json
        from opentelemetry.trace.propagation import _SPAN_KEY
        from opentelemetry.sdk._logs._internal import LogRecordLimits
    """)
    assert found == [
        "scratch.py:3: imports the private name _SPAN_KEY from opentelemetry.trace.propagation",
        "scratch.py:4: imports the private module part '_internal' of "
        "opentelemetry.sdk._logs._internal",
    ]


def test_a_private_attribute_of_an_sdk_object_or_module_is_named() -> None:
    found = _check("""
        from opentelemetry import trace
        def f(provider):
            provider._active_span_processor.shutdown()
            return trace._TRACER_PROVIDER
    """)
    assert found == [
        "scratch.py:4: touches _active_span_processor, which agent/ does not define",
        "scratch.py:5: reads _TRACER_PROVIDER of opentelemetry.trace",
    ]


def test_a_private_name_of_an_sdk_object_is_named_even_when_agent_defines_the_same_name() -> None:
    found = _check("""
        from opentelemetry.sdk.metrics import MeterProvider
        class Holder:
            provider: MeterProvider
        def build(holder: Holder, exporter: MeterProvider) -> None:
            provider = MeterProvider()
            provider._lock = None
            holder.provider._lock = None
            exporter._lock = None
    """)
    assert found == [
        "scratch.py:7: touches _lock of an OpenTelemetry object",
        "scratch.py:8: touches _lock of an OpenTelemetry object",
        "scratch.py:9: touches _lock of an OpenTelemetry object",
    ]


def test_getattr_with_a_private_name_is_named() -> None:
    found = _check("""
        def temporality(exporter):
            return getattr(exporter, "_preferred_temporality", None)
    """)
    assert found == ["scratch.py:3: getattr() of _preferred_temporality, which agent/ does not "
                     "define"]  # fmt: skip


def test_a_subclass_setting_or_overriding_its_sdk_bases_private_names_is_named() -> None:
    found = _check("""
        from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
        class Tee(MetricExporter):
            def __init__(self, inner):
                super().__init__()
                self._preferred_temporality = {}
                self._inner = inner
        class Reader(MetricReader):
            def _receive_metrics(self, data, timeout_millis=10_000, **kwargs):
                return None
    """)
    assert found == [
        "scratch.py:6: Tee uses _preferred_temporality of its OpenTelemetry base",
        "scratch.py:9: Reader uses _receive_metrics of its OpenTelemetry base",
    ]


def test_an_sdk_object_built_with_new_is_named() -> None:
    found = _check("""
        from opentelemetry._logs import LogRecord
        record = LogRecord.__new__(LogRecord)
    """)
    assert found == ["scratch.py:3: builds opentelemetry._logs.LogRecord with __new__"]
