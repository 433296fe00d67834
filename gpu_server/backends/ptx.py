"""A small parser of PTX text: kernel entry points, their parameter layouts, module globals.

It reads what NVRTC and nvcc emit (``.version``/``.target`` header, ``.entry`` kernels with
``.param`` lists, module-scope ``.global`` and ``.const`` variables, ``.func`` bodies and
``.section`` debug data that it skips) without validating instructions. Parameter offsets
follow the PTX ABI: each parameter is placed at the next multiple of its alignment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from gpu_server.backends.base import ParamLayout


class PtxError(ValueError):
    """The text is not PTX this parser understands."""


@dataclass(frozen=True)
class PtxGlobal:
    """A module-scope variable in the ``.global`` or ``.const`` state space."""

    name: str
    size: int
    align: int


@dataclass(frozen=True)
class PtxModule:
    """What a PTX module defines: its header, kernels and module-scope variables.

    Variable initializers (``= 5``, ``= {1, 2}``) are skipped: only names and sizes are kept.
    """

    version: tuple[int, int]
    target: str
    entries: dict[str, ParamLayout] = field(default_factory=dict)
    globals: dict[str, PtxGlobal] = field(default_factory=dict)


_TYPE_SIZES = {
    **dict.fromkeys((".b8", ".u8", ".s8"), 1),
    **dict.fromkeys((".b16", ".u16", ".s16", ".f16", ".bf16"), 2),
    **dict.fromkeys((".b32", ".u32", ".s32", ".f32", ".f16x2", ".bf16x2"), 4),
    **dict.fromkeys((".b64", ".u64", ".s64", ".f64"), 8),
    ".b128": 16,
}
_POINTER_SPACES = frozenset((".global", ".const", ".shared", ".local"))
_LINKAGE = frozenset((".visible", ".extern", ".weak", ".common"))

_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*.*?\*/', re.DOTALL)
_LINE_DIRECTIVE = re.compile(
    r"^[ \t]*\.(version|target|address_size|file)\b([^\n]*)$", re.MULTILINE
)
_BRACE_OR_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|[{};]')
_IDENT = r"[A-Za-z_$%][\w$]*"
_ENTRY = re.compile(rf"\.entry\s+({_IDENT})\s*(?:\(([^()]*)\))?", re.DOTALL)
# Performance directives between an entry's parameters and its body: .maxntid 256, 1, 1
_ENTRY_DIRECTIVES = re.compile(r"(?:\s*\.\w+(?:\s+\d+(?:\s*,\s*\d+)*)?)*\s*")
_DECLARATOR = re.compile(rf"({_IDENT})((?:\[\d*\])*)")


def parse_ptx(text: str) -> PtxModule:
    """Parse PTX source; raises ``PtxError`` when it is not PTX or is malformed."""
    text = _COMMENT_OR_STRING.sub(_blank_comment, text)
    directives: dict[str, str] = {}
    for match in _LINE_DIRECTIVE.finditer(text):
        directives.setdefault(match.group(1), match.group(2).strip())
    if "version" not in directives or "target" not in directives:
        raise PtxError("no .version and .target directives: not PTX text")
    version = re.fullmatch(r"(\d+)\.(\d+)", directives["version"])
    if version is None:
        raise PtxError(f"malformed .version {directives['version']!r}")
    target = directives["target"].split(",")[0].strip()
    module = PtxModule((int(version.group(1)), int(version.group(2))), target)
    for statement in _statements(_LINE_DIRECTIVE.sub("", text)):
        _parse_statement(statement, module)
    return module


def _blank_comment(match: re.Match[str]) -> str:
    token = match.group()
    return token if token.startswith('"') else " "


def _statements(text: str) -> Iterator[str]:
    """Module-scope statements; for a definition with a body, the text before its ``{``."""
    depth = 0
    start = 0
    body_at = 0
    for match in _BRACE_OR_STRING.finditer(text):
        token = match.group()
        if token == "{":
            if depth == 0:
                body_at = match.start()
            depth += 1
        elif token == "}":
            depth -= 1
            if depth < 0:
                raise PtxError("unbalanced '}'")
            if depth == 0 and "=" not in text[start:body_at]:
                yield text[start:body_at]
                start = match.end()
        elif token == ";" and depth == 0:
            yield text[start : match.start()]
            start = match.end()
    if depth:
        raise PtxError("unbalanced '{'")
    if text[start:].strip():
        raise PtxError(f"unterminated statement {text[start:].strip()[:60]!r}")


def _parse_statement(statement: str, module: PtxModule) -> None:
    tokens = statement.split("=", 1)[0].split()
    extern = False
    while tokens and tokens[0] in _LINKAGE:
        extern |= tokens.pop(0) == ".extern"
    if not tokens:
        return
    if tokens[0] == ".entry":
        name, layout = _parse_entry(statement)
        if name in module.entries:
            raise PtxError(f"kernel {name} defined twice")
        module.entries[name] = layout
    elif tokens[0] in (".global", ".const") and not extern:
        name, size, align = _parse_declaration(" ".join(tokens[1:]), "variable")
        module.globals[name] = PtxGlobal(name, size, align)


def _parse_entry(header: str) -> tuple[str, ParamLayout]:
    match = _ENTRY.search(header)
    if match is None:
        raise PtxError(f"malformed .entry {header.strip()[:60]!r}")
    name, params = match.group(1), match.group(2) or ""
    if not _ENTRY_DIRECTIVES.fullmatch(header, match.end()):
        raise PtxError(f"kernel {name}: unexpected {header[match.end() :].strip()[:60]!r}")
    offsets: list[int] = []
    sizes: list[int] = []
    offset = 0
    for param in filter(None, (p.strip() for p in params.split(","))):
        if not param.startswith(".param"):
            raise PtxError(f"kernel {name}: parameter {param!r} is not a .param")
        _, size, align = _parse_declaration(param[len(".param") :], f"parameter of {name}")
        offset = -(-offset // align) * align
        offsets.append(offset)
        sizes.append(size)
        offset += size
    return name, ParamLayout(tuple(offsets), tuple(sizes))


def _parse_declaration(text: str, what: str) -> tuple[str, int, int]:
    """(name, size, alignment) of ``[.align N] [.ptr SPACE .align N] .TYPE name[dims]``."""
    tokens = re.sub(r"\s*\]", "]", re.sub(r"\s*\[\s*", "[", text)).split()
    align = 0
    type_size = 0
    pointer = False
    for i, token in enumerate(tokens):
        if token == ".align":
            continue
        if i and tokens[i - 1] == ".align":
            value = int(token) if token.isdigit() else 0
            if value <= 0 or value & (value - 1):
                raise PtxError(f"{what}: bad alignment {token!r}")
            if not pointer:
                align = value
        elif token == ".ptr":
            pointer = True
        elif (pointer and token in _POINTER_SPACES) or token.startswith(".attribute("):
            continue
        elif token in _TYPE_SIZES and not type_size:
            type_size = _TYPE_SIZES[token]
        elif i == len(tokens) - 1 and type_size and (declarator := _DECLARATOR.fullmatch(token)):
            count = 1
            for dim in re.findall(r"\[(\d*)\]", declarator.group(2)):
                if not dim:
                    raise PtxError(f"{what} {declarator.group(1)}: unsized array")
                count *= int(dim)
            return declarator.group(1), type_size * count, align or type_size
        else:
            raise PtxError(f"{what}: unexpected {token!r} in {text.strip()!r}")
    raise PtxError(f"{what}: no type and name in {text.strip()!r}")
