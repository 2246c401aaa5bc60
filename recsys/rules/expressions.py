"""Business-rule expressions over item fields: a whitelist grammar parsed and compiled to SQL with parameters.

The grammar (keywords are case-insensitive)::

    expression := or
    or         := and ("OR" and)*
    and        := not ("AND" not)*
    not        := "NOT" not | "(" expression ")" | predicate
    predicate  := field op value
                | field ["NOT"] "IN" "(" value ("," value)* ")"
                | field "CONTAINS" value
                | field "IS" ["NOT"] "NULL"
    op         := "=" | "!=" | "<" | "<=" | ">" | ">="
    field      := "id" | "title" | "categories" | "published_at" | "created_at" | "attributes." key
    key        := [A-Za-z0-9_]{1,64}
    value      := number | "double-quoted string" | true | false

Nothing of the text reaches SQL but the whitelisted field expressions and operators; every value is
a parameter. Predicates are two-valued: one on a missing attribute, or on an attribute of another
type than the value (``attributes.price < 50`` where price is a string), is false, never an error,
and ``!=`` is exactly ``NOT =``. The compiled SQL reads the item table under the alias ``i``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_CHARS = 1000
MAX_DEPTH = 12  # nested NOTs and parentheses
MAX_PREDICATES = 32
MAX_LIST_VALUES = 100
MAX_STRING_CHARS = 256
_SURROGATE = re.compile("[\ud800-\udfff]")

FIELDS = ("id", "title", "categories", "published_at", "created_at")
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_COLUMNS = {"id": "i.external_id", "title": "i.title", "published_at": "i.published_at", "created_at": "i.created_at"}
_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
_KEYWORDS = {"and", "or", "not", "in", "contains", "is", "null", "true", "false"}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<op>!=|<=|>=|=|<|>)
  | (?P<punct>[(),])
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)?)
    """,
    re.VERBOSE,
)


class ExpressionError(ValueError):
    """The text is not an expression of the grammar; ``position`` is the 0-based offset of the fault."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.message = message
        self.position = position


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, op, punct, word, end
    text: str
    position: int
    value: Any = None


@dataclass(frozen=True)
class Predicate:
    field: str  # one of FIELDS, or attributes.<key>
    operator: str  # an op, "in", "not in", "contains", "is null", "is not null"
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class Junction:
    operator: str  # "and" or "or"
    operands: tuple[Node, ...]


Node = Predicate | Not | Junction


@dataclass(frozen=True)
class Compiled:
    """A boolean SQL expression over the item alias ``i`` and the parameters it names."""

    sql: str
    params: dict[str, Any]


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"an expression is at most {MAX_CHARS} characters", MAX_CHARS)
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ExpressionError(f"unexpected character {text[position]!r}", position)
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_token(kind, match.group(), position))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _token(kind: str, text: str, position: int) -> Token:
    if kind == "number":
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise ExpressionError("number out of range", position)
        return Token(kind, text, position, int(value) if value.is_integer() and abs(value) < 2**53 else value)
    if kind == "string":
        string = re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)
        # A lone surrogate has no UTF-8 form: PostgreSQL's JSON refuses it ("Unicode low surrogate").
        if len(string) > MAX_STRING_CHARS or "\x00" in string or _SURROGATE.search(string):
            raise ExpressionError(
                f"a string is at most {MAX_STRING_CHARS} characters, without NUL or lone surrogates", position
            )
        return Token(kind, text, position, string)
    if kind == "word" and text.lower() in _KEYWORDS:
        return Token("keyword", text.lower(), position)
    return Token(kind, text, position)


def parse(text: str) -> Node:
    """The expression's tree; raises ExpressionError with the position of the first fault."""
    if not text.strip():
        raise ExpressionError("the expression is empty", 0)
    return _Parser(tokenize(text)).expression_whole()


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.at = 0
        self.predicates = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        token = self.token
        if token.kind == kind and (text is None or token.text == text):
            return self.take()
        return None

    def expect(self, kind: str, text: str, what: str) -> Token:
        token = self.accept(kind, text)
        if token is None:
            raise ExpressionError(f"expected {what}, found {_describe(self.token)}", self.token.position)
        return token

    def expression_whole(self) -> Node:
        node = self.disjunction(0)
        if self.token.kind != "end":
            raise ExpressionError(f"expected AND, OR or the end, found {_describe(self.token)}", self.token.position)
        return node

    def disjunction(self, depth: int) -> Node:
        operands = [self.conjunction(depth)]
        while self.accept("keyword", "or"):
            operands.append(self.conjunction(depth))
        return operands[0] if len(operands) == 1 else Junction("or", tuple(operands))

    def conjunction(self, depth: int) -> Node:
        operands = [self.negation(depth)]
        while self.accept("keyword", "and"):
            operands.append(self.negation(depth))
        return operands[0] if len(operands) == 1 else Junction("and", tuple(operands))

    def negation(self, depth: int) -> Node:
        if depth >= MAX_DEPTH:
            raise ExpressionError(f"nested deeper than {MAX_DEPTH} levels", self.token.position)
        if self.accept("keyword", "not"):
            return Not(self.negation(depth + 1))
        if self.accept("punct", "("):
            node = self.disjunction(depth + 1)
            self.expect("punct", ")", "')'")
            return node
        return self.predicate()

    def predicate(self) -> Predicate:
        start = self.token
        field = self.field()
        self.predicates += 1
        if self.predicates > MAX_PREDICATES:
            raise ExpressionError(f"at most {MAX_PREDICATES} comparisons", start.position)
        operator_token = self.token
        if self.accept("keyword", "is"):
            negated = self.accept("keyword", "not") is not None
            self.expect("keyword", "null", "NULL")
            return _checked(Predicate(field, "is not null" if negated else "is null", ()), start)
        if self.accept("keyword", "contains"):
            return _checked(Predicate(field, "contains", (self.value(),)), operator_token)
        negated = self.accept("keyword", "not") is not None
        if self.accept("keyword", "in"):
            return _checked(Predicate(field, "not in" if negated else "in", self.value_list()), operator_token)
        if negated:
            raise ExpressionError(f"expected IN after NOT, found {_describe(self.token)}", self.token.position)
        operator = self.accept("op")
        if operator is None:
            raise ExpressionError(
                f"expected an operator (= != < <= > >= IN CONTAINS IS) after {field}, found {_describe(self.token)}",
                self.token.position,
            )
        return _checked(Predicate(field, operator.text, (self.value(),)), operator_token)

    def field(self) -> str:
        token = self.token
        if token.kind != "word":
            raise ExpressionError(f"expected a field, found {_describe(token)}", token.position)
        name = token.text
        if name.startswith("attributes.") and _KEY.fullmatch(name[len("attributes.") :]):
            self.take()
            return name
        if name not in FIELDS:
            raise ExpressionError(
                f"unknown field {name!r}: use {', '.join(FIELDS)} or attributes.<key> (key of [A-Za-z0-9_], 1-64)",
                token.position,
            )
        self.take()
        return name

    def value(self) -> Any:
        token = self.token
        if token.kind in ("number", "string"):
            self.take()
            return token.value
        if token.kind == "keyword" and token.text in ("true", "false"):
            self.take()
            return token.text == "true"
        if token.kind == "keyword" and token.text == "null":
            raise ExpressionError("compare with NULL by IS NULL or IS NOT NULL", token.position)
        raise ExpressionError(
            f'expected a value (number, "string", true, false), found {_describe(token)}', token.position
        )

    def value_list(self) -> tuple[Any, ...]:
        self.expect("punct", "(", "'(' after IN")
        values = [self.value()]
        while self.accept("punct", ","):
            if len(values) >= MAX_LIST_VALUES:
                raise ExpressionError(f"IN takes at most {MAX_LIST_VALUES} values", self.token.position)
            values.append(self.value())
        self.expect("punct", ")", "')' or ','")
        return tuple(values)


def _describe(token: Token) -> str:
    return "the end" if token.kind == "end" else repr(token.text)


def _checked(predicate: Predicate, token: Token) -> Predicate:
    """Types the grammar cannot say: which operators and values each field takes."""
    field, operator, values = predicate.field, predicate.operator, predicate.values
    fault = _type_fault(field, operator, values)
    if fault:
        raise ExpressionError(fault, token.position)
    if field in ("published_at", "created_at"):
        return Predicate(field, operator, tuple(_instant(v, token) for v in values))
    return predicate


def _type_fault(field: str, operator: str, values: tuple[Any, ...]) -> str | None:
    if field.startswith("attributes."):
        return None
    if field == "categories":
        if operator not in ("contains", "in", "not in"):
            return 'categories takes CONTAINS "x" or IN ("x", ...)'
        return None if all(isinstance(v, str) for v in values) else "categories are compared with strings"
    if operator == "contains":
        return f"CONTAINS applies to categories and attributes, not {field}"
    if operator.startswith("is") and field != "published_at":
        return f"{field} is never null"
    if not all(isinstance(v, str) for v in values):
        return f"{field} is compared with a string" + (' date like "2026-01-31"' if field.endswith("_at") else "")
    return None


def _instant(value: str, token: Token) -> datetime:
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise ExpressionError(
            f'{value!r} is not a date or time like "2026-01-31" or "2026-01-31T12:00:00Z"', token.position
        ) from None
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    try:
        # In UTC: PostgreSQL refuses offsets past ±15:59 that Python accepts (up to ±23:59).
        return instant.astimezone(UTC)
    except OverflowError:
        raise ExpressionError(f"{value!r} is out of range once in UTC", token.position) from None


# ---- SQL ----------------------------------------------------------------------------------------


def compile_sql(node: Node, *, prefix: str) -> Compiled:
    """The tree as one boolean SQL expression (never NULL); parameters are named ``<prefix><n>``."""
    params: dict[str, Any] = {}
    return Compiled(_sql(node, prefix, params), params)


def expression_compile(text: str, *, prefix: str) -> Compiled:
    return compile_sql(parse(text), prefix=prefix)


def _sql(node: Node, prefix: str, params: dict[str, Any]) -> str:
    if isinstance(node, Junction):
        return "(" + f" {node.operator.upper()} ".join(_sql(n, prefix, params) for n in node.operands) + ")"
    if isinstance(node, Not):
        return f"(NOT {_sql(node.operand, prefix, params)})"
    negated = {"!=": "=", "not in": "in"}.get(node.operator)
    if negated:  # != is exactly NOT =, also where a side is missing
        return f"(NOT coalesce({_predicate(Predicate(node.field, negated, node.values), prefix, params)}, false))"
    return f"coalesce({_predicate(node, prefix, params)}, false)"


def _param(value: Any, prefix: str, params: dict[str, Any]) -> str:
    name = f"{prefix}{len(params)}"
    params[name] = value
    return f"%({name})s"


def _predicate(node: Predicate, prefix: str, params: dict[str, Any]) -> str:
    if node.field.startswith("attributes."):
        return _attribute(node, prefix, params)
    if node.field == "categories":
        array = "ARRAY[" + ", ".join(_param(v, prefix, params) + "::varchar" for v in node.values) + "]"
        if node.operator == "contains":
            return f"i.categories @> {array}"
        return f"i.categories && {array}"
    column = _COLUMNS[node.field]
    cast = "::timestamptz" if node.field.endswith("_at") else "::text"
    if node.operator in ("is null", "is not null"):
        return f"{column} {node.operator.upper()}"
    if node.operator in ("in", "not in"):
        array = "ARRAY[" + ", ".join(_param(v, prefix, params) + cast for v in node.values) + "]"
        return f"{column} = ANY({array})"
    return f"{column} {node.operator} {_param(node.values[0], prefix, params)}{cast}"


def _attribute(node: Predicate, prefix: str, params: dict[str, Any]) -> str:
    key = _param(node.field[len("attributes.") :], prefix, params)
    value = f"(i.attributes -> {key}::text)"
    if node.operator == "is null":
        return f"({value} IS NULL OR {value} = 'null'::jsonb)"
    if node.operator == "is not null":
        return f"({value} IS NOT NULL AND {value} <> 'null'::jsonb)"
    if node.operator == "contains":  # an array attribute holding the value
        return f"{value} @> {_param(json.dumps([node.values[0]]), prefix, params)}::jsonb"
    if node.operator == "in":
        array = "ARRAY[" + ", ".join(_param(json.dumps(v), prefix, params) + "::jsonb" for v in node.values) + "]"
        return f"{value} = ANY({array})"
    literal = f"{_param(json.dumps(node.values[0]), prefix, params)}::jsonb"
    if node.operator == "=":
        return f"{value} = {literal}"
    # jsonb orders values of different types by type: an ordering needs the same type on both sides.
    return f"(jsonb_typeof({value}) = jsonb_typeof({literal}) AND {value} {node.operator} {literal})"
