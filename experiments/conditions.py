"""A small, safe expression language for ``feature_based`` routing rules.

User text is tokenised and parsed by hand into an immutable tree; nothing here hands it to
Python's compiler. Grammar (``!``, ``&&`` and ``||`` are accepted for ``not``, ``and``, ``or``)::

    condition  := or_expr END
    or_expr    := and_expr (("or" | "||") and_expr)*
    and_expr   := not_expr (("and" | "&&") not_expr)*
    not_expr   := ("not" | "!") not_expr | comparison
    comparison := operand [("==" | "!=" | "<" | "<=" | ">" | ">=") operand
                           | ["not"] "in" ("(" | "[") [literal ("," literal)* [","]] (")" | "]")]
    operand    := NAME | literal | "(" or_expr ")"
    literal    := ["-"] NUMBER | STRING | true | True | false | False | null | None

Semantics: a missing name (or a value that is not str/int/float/bool/None) is null. ``==`` is
True only for equal values of the same kind (numbers compare across int/float, booleans are not
numbers, ``null == null``); ``!=`` is its negation; ``in`` is ``==`` against any list item.
Ordering holds only between two numbers or two strings, otherwise it is False. A bare operand is
true when it is ``true``, a non-zero number or a non-empty string. Chained comparisons are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

REQUEST_FEATURES: tuple[str, ...] = (
    "width", "height", "aspect", "format", "mode", "background", "brightness", "bytes",
)  # fmt: skip

MAX_LENGTH = 1000
MAX_TOKENS = 300
MAX_DEPTH = 32
MAX_NAME_LENGTH = 64
MAX_DIGITS = 30

_OPERATOR_WORDS = ("and", "or", "not", "in")
_CONSTANTS = {
    "true": True, "false": False, "null": None, "True": True, "False": False, "None": None,
}  # fmt: skip
# Python words someone may try; refusing them by name gives a clearer message than a parse error.
_RESERVED = frozenset(
    "as assert async await break class continue def del elif else except finally for from global"
    " if import is lambda nonlocal pass raise return try while with yield".split()
)
_SYMBOLS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ",", "-")
_SYMBOL_KIND = {"&&": "and", "||": "or", "!": "not"}
_COMPARISONS = frozenset(("==", "!=", "<", "<=", ">", ">="))
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


class ConditionError(ValueError):
    """A condition that cannot be parsed, with where it went wrong so the 400 can say so."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"position {position}: {message}")
        self.position = position


class _Token(NamedTuple):
    kind: str  # "name", "literal", "op", "and", "or", "not", "in", "end"
    value: Any
    pos: int
    text: str


@dataclass(frozen=True)
class _Name:
    name: str


@dataclass(frozen=True)
class _Literal:
    value: str | int | float | bool | None


@dataclass(frozen=True)
class _Not:
    operand: _Node


@dataclass(frozen=True)
class _BoolOp:
    op: str  # "and" | "or"
    operands: tuple[_Node, ...]


@dataclass(frozen=True)
class _Compare:
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _In:
    operand: _Node
    values: tuple[_Literal, ...]
    negated: bool


_Node = _Name | _Literal | _Not | _BoolOp | _Compare | _In


def _describe(token: _Token) -> str:
    """Name a token in an error message without echoing a huge literal back."""
    if token.kind == "end":
        return "end of input"
    text = token.text if len(token.text) <= 24 else token.text[:21] + "..."
    already_quoted = token.kind == "literal" and token.text[0] in "'\""
    return text if already_quoted else f"'{text}'"


def _tokenize(text: str) -> list[_Token]:
    """Split the text into tokens, refusing anything outside the language as early as possible."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if len(tokens) >= MAX_TOKENS:
            raise ConditionError(i, f"condition has more than {MAX_TOKENS} tokens")
        start = i
        if ch in _NAME_START:
            while i < n and text[i] in _NAME_CHARS:
                i += 1
            word = text[start:i]
            if len(word) > MAX_NAME_LENGTH:
                raise ConditionError(start, f"name is longer than {MAX_NAME_LENGTH} characters")
            if word.startswith("__"):
                raise ConditionError(start, f"names starting with '__' are not allowed: {word!r}")
            if word in _RESERVED:
                raise ConditionError(start, f"'{word}' is not supported in conditions")
            if i < n and text[i] == ".":
                raise ConditionError(i, "attribute access is not allowed")
            if word in _CONSTANTS:
                tokens.append(_Token("literal", _CONSTANTS[word], start, word))
            else:
                tokens.append(
                    _Token(word if word in _OPERATOR_WORDS else "name", word, start, word)
                )
        elif ch in _DIGITS or (ch == "." and i + 1 < n and text[i + 1] in _DIGITS):
            while i < n and text[i] in _DIGITS:
                i += 1
            if i < n and text[i] == ".":
                i += 1
                while i < n and text[i] in _DIGITS:
                    i += 1
            literal = text[start:i]
            if i < n and (text[i] in _NAME_CHARS or text[i] == "."):
                raise ConditionError(i, f"malformed number, unexpected {text[i]!r}")
            if sum(c in _DIGITS for c in literal) > MAX_DIGITS:
                raise ConditionError(start, f"number has more than {MAX_DIGITS} digits")
            value = float(literal) if "." in literal else int(literal)
            tokens.append(_Token("literal", value, start, literal))
        elif ch in "'\"":
            i, value = _scan_string(text, i)
            tokens.append(_Token("literal", value, start, text[start:i]))
        else:
            symbol = next((s for s in _SYMBOLS if text.startswith(s, i)), None)
            if symbol is None:
                hint = "; use '==' to compare" if ch == "=" else ""
                shown = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
                raise ConditionError(i, f"unexpected character {shown}{hint}")
            i += len(symbol)
            tokens.append(_Token(_SYMBOL_KIND.get(symbol, "op"), symbol, start, symbol))
    tokens.append(_Token("end", None, n, ""))
    return tokens


def _scan_string(text: str, start: int) -> tuple[int, str]:
    """Read a quoted string at ``start``; return the index after its closing quote and its value."""
    quote, i, parts = text[start], start + 1, []
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return i + 1, "".join(parts)
        if ch == "\\":
            if i + 1 >= len(text):
                break
            escaped = _ESCAPES.get(text[i + 1])
            if escaped is None:
                raise ConditionError(i, f"unknown escape '\\{text[i + 1]}' in string")
            parts.append(escaped)
            i += 2
            continue
        if not ch.isprintable() and ch not in "\t":
            raise ConditionError(i, f"control character U+{ord(ch):04X} in string")
        parts.append(ch)
        i += 1
    raise ConditionError(start, f"unterminated string, expected a closing {quote}")


class _Parser:
    """Recursive descent over the token list, with the nesting depth checked before recursing."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0
        self.names: set[str] = set()
        self.prev: _Token | None = None

    def parse(self) -> tuple[_Node, frozenset[str]]:
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            if self._is_op(*_COMPARISONS):
                raise ConditionError(token.pos, "comparisons cannot be chained; use 'and'")
            raise self._expected("'and', 'or' or end of input", after_prev=False)
        return node, frozenset(self.names)

    def _peek(self) -> _Token:
        return self.tokens[self.index]

    def _take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        self.prev = token
        return token

    def _is_op(self, *symbols: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == "op" and token.value in symbols

    def _enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionError(token.pos, f"condition is nested deeper than {MAX_DEPTH} levels")

    def _expected(self, what: str, after_prev: bool = True) -> ConditionError:
        token = self._peek()
        after = f" after '{self.prev.text}'" if after_prev and self.prev is not None else ""
        return ConditionError(token.pos, f"expected {what}{after}, found {_describe(token)}")

    def _or(self) -> _Node:
        operands = [self._and()]
        while self._peek().kind == "or":
            self._take()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else _BoolOp("or", tuple(operands))

    def _and(self) -> _Node:
        operands = [self._not()]
        while self._peek().kind == "and":
            self._take()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else _BoolOp("and", tuple(operands))

    def _not(self) -> _Node:
        if self._peek().kind != "not":
            return self._comparison()
        self._enter(self._take())
        node = _Not(self._not())
        self.depth -= 1
        return node

    def _comparison(self) -> _Node:
        left = self._operand()
        token = self._peek()
        if self._is_op(*_COMPARISONS):
            self._take()
            return _Compare(token.value, left, self._operand())
        if token.kind == "not":
            self._take()
            if self._peek().kind != "in":
                raise self._expected("'in'")
        if token.kind in ("not", "in"):
            self._take()
            return _In(left, self._list(), negated=token.kind == "not")
        return left

    def _operand(self) -> _Node:
        token = self._peek()
        if token.kind == "name":
            self._take()
            follow = self._peek()
            if self._is_op("(", "["):
                what = "function calls" if follow.value == "(" else "subscripts"
                raise ConditionError(follow.pos, f"{what} are not allowed")
            self.names.add(token.value)
            return _Name(token.value)
        if self._is_op("("):
            self._enter(self._take())
            node = self._or()
            if not self._is_op(")"):
                raise self._expected("')'")
            self._take()
            self.depth -= 1
            return node
        if token.kind == "literal" or self._is_op("-"):
            return self._literal()
        raise self._expected("a condition" if self.prev is None else "a value")

    def _literal(self) -> _Literal:
        token = self._take()
        if token.kind == "literal":
            return _Literal(token.value)
        number = self._peek()
        if number.kind != "literal" or type(number.value) not in (int, float):
            raise self._expected("a number")
        self._take()
        return _Literal(-number.value)

    def _list(self) -> tuple[_Literal, ...]:
        opening = self._peek()
        if not self._is_op("(", "["):
            raise self._expected("'(' or '['")
        self._take()
        closing = ")" if opening.value == "(" else "]"
        values: list[_Literal] = []
        while not self._is_op(closing):
            if values:
                if not self._is_op(","):
                    raise self._expected(f"',' or '{closing}'")
                self._take()
                if self._is_op(closing):
                    break
            if self._peek().kind != "literal" and not self._is_op("-"):
                raise self._expected(f"a literal or '{closing}'")
            values.append(self._literal())
        self._take()
        return tuple(values)


def _kind(value: Any) -> str:
    """Classify a value so comparisons never mix booleans, numbers and strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return "string" if isinstance(value, str) else "number"


def _load(features: Mapping[str, Any], name: str) -> str | int | float | bool | None:
    """Read a feature, normalising numpy-style scalars and treating anything else as null."""
    value = features.get(name)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        try:
            value = value.item()  # np.int64, np.float32, np.bool_ ... to the Python scalar
        except (TypeError, ValueError):
            value = None
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    logger.debug("feature %r has unsupported type %s; treated as null", name, type(value).__name__)
    return None


def _equal(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    kind = _kind(a)
    if kind != _kind(b) or kind not in ("number", "string"):
        return False
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    return a > b if op == ">" else a >= b


def _truth(value: Any) -> bool:
    """Give a bare operand a truth value without Python's looser rules for other types."""
    return value is True or (_kind(value) in ("number", "string") and bool(value))


def _value(node: _Node, features: Mapping[str, Any]) -> Any:
    """Walk the tree; recursion is bounded by the depth the parser already enforced."""
    if isinstance(node, _Name):
        return _load(features, node.name)
    if isinstance(node, _Literal):
        return node.value
    if isinstance(node, _Not):
        return not _truth(_value(node.operand, features))
    if isinstance(node, _BoolOp):
        values = (_truth(_value(operand, features)) for operand in node.operands)
        return all(values) if node.op == "and" else any(values)
    if isinstance(node, _Compare):
        return _compare(node.op, _value(node.left, features), _value(node.right, features))
    value = _value(node.operand, features)
    return any(_equal(value, item.value) for item in node.values) != node.negated


@dataclass(frozen=True)
class Condition:
    """A parsed routing rule: parse once when the experiment is created, evaluate per request."""

    text: str
    _root: _Node = field(init=False, repr=False, compare=False)
    _names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ConditionError(0, f"condition must be a string, got {type(self.text).__name__}")
        if len(self.text) > MAX_LENGTH:
            raise ConditionError(MAX_LENGTH, f"condition is longer than {MAX_LENGTH} characters")
        root, names = _Parser(self.text).parse()
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_names", names)

    def evaluate(self, features: Mapping[str, Any]) -> bool:
        """Decide whether this request matches; missing or mistyped features make it False."""
        return _truth(_value(self._root, features))

    def names(self) -> frozenset[str]:
        """List the features the rule reads, so callers can warn about names nothing supplies."""
        return self._names


def parse(text: str) -> Condition:
    """Parse a rule up front so a bad one is a 400 at creation, not an error per request."""
    return Condition(text)
