"""A safe reader for CosyVoice's hyperpyyaml files (`cosyvoice.yaml`).

hyperpyyaml builds objects while it parses (`!new:pkg.Class`, `!name:pkg.func`,
`!apply:pkg.func`) and links values with `!ref <key>`. Building arbitrary classes named by a
file is code execution, so this reader never imports anything: tagged nodes become
`YamlCall(kind, target, args, kwargs)` records and references are resolved against the document.
The model code maps the few class names it knows to its own modules (see config.py).
"""

from __future__ import annotations

import ast
import copy
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

_CALL_KINDS = ("new", "name", "apply")
_REF_TOKEN = re.compile(r"<([^<>]+)>")
_KEY_PATH = re.compile(r"([^\[\]]+)|\[([^\[\]]+)\]")


class YamlConfigError(ValueError):
    """cosyvoice.yaml cannot be read or uses a construct this reader does not support."""


@dataclass
class YamlCall:
    """A `!new:` / `!name:` / `!apply:` node: what it names and the arguments it carries."""

    kind: str  # "new" | "name" | "apply"
    target: str  # dotted path as written, e.g. "cosyvoice.flow.flow.MaskedDiffWithXvec"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]


@dataclass
class _Ref:
    expression: str
    copy: bool = False


class _Loader(yaml.SafeLoader):
    """SafeLoader plus hyperpyyaml's tags; reads `1e-06` as a float as YAML 1.2 does."""


_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _node_arguments(loader: _Loader, node: yaml.Node) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(node, yaml.MappingNode):
        mapping = loader.construct_mapping(node, deep=True)
        return [], {str(key): value for key, value in mapping.items()}
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True), {}
    value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return ([] if value in ("", None) else [value]), {}


def _make_call_constructor(kind: str) -> Callable[[_Loader, str, yaml.Node], YamlCall]:
    def construct(loader: _Loader, suffix: str, node: yaml.Node) -> YamlCall:
        args, kwargs = _node_arguments(loader, node)
        return YamlCall(kind=kind, target=suffix, args=args, kwargs=kwargs)

    return construct


def _construct_ref(loader: _Loader, node: yaml.Node, *, as_copy: bool = False) -> _Ref:
    return _Ref(str(loader.construct_scalar(node)), copy=as_copy)  # type: ignore[arg-type]


def _construct_copy(loader: _Loader, node: yaml.Node) -> _Ref:
    return _construct_ref(loader, node, as_copy=True)


def _construct_tuple(loader: _Loader, node: yaml.Node) -> tuple[Any, ...]:
    return tuple(loader.construct_sequence(node, deep=True))  # type: ignore[arg-type]


def _refuse(tag: str) -> Callable[..., None]:
    def construct(*_: Any) -> None:
        raise YamlConfigError(f"cosyvoice.yaml uses {tag}, which this loader does not support")

    return construct


for _kind in _CALL_KINDS:
    _Loader.add_multi_constructor(f"!{_kind}:", _make_call_constructor(_kind))
_Loader.add_constructor("!ref", _construct_ref)
_Loader.add_constructor("!copy", _construct_copy)
_Loader.add_constructor("!tuple", _construct_tuple)
_Loader.add_multi_constructor("!include:", _refuse("!include"))
_Loader.add_constructor("!PLACEHOLDER", _refuse("!PLACEHOLDER"))


def load_hyperpyyaml_safe(text: str) -> dict[str, Any]:
    """Parse hyperpyyaml text into plain data + YamlCall records, with every `!ref` resolved."""
    try:
        document = yaml.load(text, Loader=_Loader)  # safe: _Loader derives from SafeLoader
    except yaml.YAMLError as exc:
        raise YamlConfigError(f"cosyvoice.yaml is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise YamlConfigError("cosyvoice.yaml must be a mapping at the top level")
    return _Resolver(document).resolve_document()


class _Resolver:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.in_progress: set[str] = set()

    def resolve_document(self) -> dict[str, Any]:
        for key in list(self.document):
            self.document[key] = self.resolve(self.document[key])
        return self.document

    def resolve(self, value: Any) -> Any:
        if isinstance(value, _Ref):
            resolved = self.evaluate(value.expression)
            return copy.deepcopy(resolved) if value.copy else resolved
        if isinstance(value, YamlCall):
            value.args = [self.resolve(v) for v in value.args]
            value.kwargs = {k: self.resolve(v) for k, v in value.kwargs.items()}
            return value
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.resolve(v) for v in value)
        return value

    def evaluate(self, expression: str) -> Any:
        """`<key>` → its value, `<a[b]>` → nested; text with `<key>` parts → string or number."""
        whole = _REF_TOKEN.fullmatch(expression.strip())
        if whole:
            return self.lookup(whole.group(1))
        text = _REF_TOKEN.sub(lambda m: str(self.lookup(m.group(1))), expression)
        try:
            return _safe_arithmetic(text)
        except (ValueError, SyntaxError):
            return text

    def lookup(self, path: str) -> Any:
        """Walk the document along `path`, resolving only the value found (so a node may refer
        to a sibling inside itself, as `<flow[output_size]>` within `flow`)."""
        parts = [a or b for a, b in _KEY_PATH.findall(path.strip())]
        if not parts or parts[0] not in self.document:
            raise YamlConfigError(f"!ref <{path}> names no top-level key in cosyvoice.yaml")
        if path in self.in_progress:
            raise YamlConfigError(f"!ref <{path}> refers to itself")
        self.in_progress.add(path)
        try:
            value = self.document[parts[0]]
            for part in parts[1:]:
                if isinstance(value, _Ref):
                    value = self.resolve(value)
                value = _index(value, part, path)
            return self.resolve(value)
        finally:
            self.in_progress.discard(path)


def _index(value: Any, part: str, path: str) -> Any:
    if isinstance(value, YamlCall):
        value = value.kwargs
    try:
        return value[int(part)] if isinstance(value, list | tuple) else value[part]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise YamlConfigError(f"!ref <{path}>: no entry {part!r}") from exc


_OPERATORS: dict[type[ast.operator | ast.unaryop], Callable[..., int | float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _safe_arithmetic(text: str) -> int | float:
    """Evaluate number-only arithmetic (hyperpyyaml allows `!ref <a> * 2`); anything else fails."""

    def walk(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.operand))
        raise ValueError("not arithmetic")

    return walk(ast.parse(text.strip(), mode="eval"))
