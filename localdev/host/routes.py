"""HTTP routing: ASP.NET-style route templates, and the HTTP functions the local host routes requests to.

:class:`RouteTemplate` parses a template such as ``a/{b}/{c?}``, ``{id:int}``, ``{id=7}``, ``{*rest}`` or
``file/{name}.{ext}`` and matches decoded path segments against it, case-insensitively, returning the route
values. Its :attr:`~RouteTemplate.precedence` orders templates like ASP.NET does (literal segments before
complex ones, constrained parameters before plain ones, catch-alls last); the host picks the matching
function with the lowest precedence, then the one declared first. Unknown constraints are accepted without
a check, like ``{x:unknown}`` in the Functions host.

:class:`HttpFunctionInfo` describes an indexed HTTP-triggered function (its full route, route prefix
included); :class:`HttpFunction` is the host's entry for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from localdev.host.loading import HostConfigError

__all__ = ["HttpFunction", "HttpFunctionInfo", "RouteTemplate"]

_LITERAL, _COMPLEX, _CONSTRAINED, _PARAM, _CATCH_ALL = 1, 2, 3, 4, 5

_CONSTRAINTS: dict[str, re.Pattern[str]] = {
    "int": re.compile(r"^-?\d+$"),
    "long": re.compile(r"^-?\d+$"),
    "alpha": re.compile(r"^[A-Za-z]+$"),
    "bool": re.compile(r"^(?i:true|false)$"),
    "guid": re.compile(r"^[({]?[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}[)}]?$"),
    "double": re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"),
    "float": re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"),
    "decimal": re.compile(r"^-?(\d+\.?\d*|\.\d+)$"),
}


@dataclass(frozen=True)
class _Param:
    name: str
    optional: bool = False
    default: str | None = None
    catch_all: bool = False
    checks: tuple[re.Pattern[str], ...] = ()
    constrained: bool = False

    def accepts(self, value: str) -> bool:
        return all(check.match(value) for check in self.checks)


def _parse_param(body: str, template: str) -> _Param:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    default: str | None = None
    if "=" in body:
        body, default = body.split("=", 1)
    optional = body.endswith("?")
    body = body.rstrip("?")
    name, *constraints = body.split(":")
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise HostConfigError(f"route {template!r}: invalid parameter {{{body}}}")
    checks = tuple(check for c in constraints if (check := _constraint(c, template)) is not None)
    return _Param(name, optional or catch_all, default, catch_all, checks, bool(constraints))


_LENGTHS = {"minlength": "{{{},}}", "maxlength": "{{0,{}}}", "length": "{{{}}}"}


def _constraint(text: str, template: str) -> re.Pattern[str] | None:
    """The check of constraint ``text``: a named one (``int``...), or a length (``maxlength(0)``, ``minlength(2)``,
    ``length(4)``, ``length(2,8)``); None for one the host accepts without a check."""
    found = re.fullmatch(r"([A-Za-z]+)(?:\(([^()]*)\))?", text)
    if found is None:
        return None
    kind, args = found[1].lower(), found[2]
    if args is None:
        return _CONSTRAINTS.get(kind)
    if kind not in _LENGTHS:
        return None
    bounds = [a.strip() for a in args.split(",")]
    if not all(b.isdigit() for b in bounds) or len(bounds) > (2 if kind == "length" else 1):
        raise HostConfigError(f"route {template!r}: invalid constraint {text!r}")
    quantifier = f"{{{bounds[0]},{bounds[1]}}}" if len(bounds) == 2 else _LENGTHS[kind].format(int(bounds[0]))
    return re.compile(f"^.{quantifier}\\Z", re.DOTALL)


@dataclass(frozen=True)
class _Segment:
    kind: int
    literal: str = ""
    param: _Param | None = None
    pattern: re.Pattern[str] | None = None
    params: tuple[_Param, ...] = ()


class RouteTemplate:
    """An ASP.NET-style route template: ``a/{b}/{c?}``, ``{id:int}``, ``{*rest}``, ``file/{name}.{ext}``."""

    def __init__(self, template: str) -> None:
        self.template = template.strip("/")
        if not self.template:  # as the Functions host: its router never runs a function of an empty route
            raise HostConfigError(f"route {template!r}: the Functions host routes no request to an empty route (a "
                                  "request to / is answered by the host itself); for the site's root use an "
                                  "optional parameter that takes no value, such as {ignored:maxlength(0)?}")
        self.segments: tuple[_Segment, ...] = (
            tuple(self._segment(part) for part in self.template.split("/") if part) if self.template else ()
        )
        for i, segment in enumerate(self.segments):
            if segment.kind == _CATCH_ALL and i != len(self.segments) - 1:
                raise HostConfigError(f"route {template!r}: a catch-all parameter must be the last segment")
        self.precedence: tuple[int, ...] = tuple(segment.kind for segment in self.segments)

    def _segment(self, part: str) -> _Segment:
        pieces = re.split(r"(\{[^{}]*\})", part)
        pieces = [piece for piece in pieces if piece]
        if len(pieces) == 1 and not pieces[0].startswith("{"):
            if "{" in part or "}" in part:
                raise HostConfigError(f"route {self.template!r}: unbalanced braces in {part!r}")
            return _Segment(_LITERAL, literal=part.casefold())
        if len(pieces) == 1:
            param = _parse_param(pieces[0][1:-1], self.template)
            if param.catch_all:
                return _Segment(_CATCH_ALL, param=param)
            return _Segment(_CONSTRAINED if param.constrained else _PARAM, param=param)
        regex, params = "", []
        for piece in pieces:
            if piece.startswith("{"):
                param = _parse_param(piece[1:-1], self.template)
                params.append(param)
                regex += f"(?P<{param.name}>.+?)"
            else:
                regex += re.escape(piece)
        return _Segment(_COMPLEX, pattern=re.compile(f"^{regex}$", re.IGNORECASE), params=tuple(params))

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        """Route values when the decoded path ``parts`` match, else None."""
        values: dict[str, str] = {}
        for i, segment in enumerate(self.segments):
            if segment.kind == _CATCH_ALL:
                assert segment.param is not None
                rest = "/".join(parts[i:])
                if rest:
                    values[segment.param.name] = rest
                elif segment.param.default is not None:
                    values[segment.param.name] = segment.param.default
                return values
            if i >= len(parts):
                param = segment.param
                if param is None or not (param.optional or param.default is not None):
                    return None
                if param.default is not None:
                    values[param.name] = param.default
                continue
            part = parts[i]
            if segment.kind == _LITERAL:
                if part.casefold() != segment.literal:
                    return None
            elif segment.kind == _COMPLEX:
                assert segment.pattern is not None
                found = segment.pattern.match(part)
                if found is None:
                    return None
                for param in segment.params:
                    if not param.accepts(found[param.name]):
                        return None
                    values[param.name] = found[param.name]
            else:
                assert segment.param is not None
                if not segment.param.accepts(part):
                    return None
                values[segment.param.name] = part
        if len(parts) > len(self.segments):
            return None
        return values


@dataclass(frozen=True)
class HttpFunctionInfo:
    """An HTTP-triggered function as the host serves it (``LocalHost.http_functions()``)."""

    name: str
    route: str  # the full template, route prefix included
    methods: frozenset[str] | None  # None = every method
    auth_level: str  # "anonymous", "function" or "admin"
    arg_name: str


@dataclass
class HttpFunction:
    """The host's entry for an HTTP function: its route template, and ``order`` (declaration order, the tie-break)."""

    info: HttpFunctionInfo
    template: RouteTemplate
    user_function: Callable[..., Any]
    order: int
    wants_context: bool = False
