"""Exception summaries: what of an exception a task finalizer keeps, and its traceback text.

Owns :func:`summarize`, which runs inside task finalizers, and
:meth:`ExceptionSummary.format`, which runs in the reporter thread and gives the text
CPython's ``traceback.format_exception`` gives for the same exception (chains, exception
groups, notes, the columns of each line on 3.11+).

``summarize`` keeps plain values only (type names, messages, file/line/column of each
frame): never the exception, its traceback, frames or locals. It imports nothing. The
user code it runs is what CPython's default exception handler runs for the same report:
``str()`` of each exception (and of its notes) and reading its ``__notes__``. Unlike
``traceback.TracebackException`` it computes no "Did you mean ...?" suggestions: those
call ``dir()`` on user objects, read attributes through ``hasattr`` and can import
modules, none of which belongs in a finalizer.
"""

from __future__ import annotations

import builtins
import collections.abc
import itertools
import linecache
import sys
import traceback
from collections.abc import Iterator
from typing import Any, Optional

MAX_GROUP_WIDTH = 15
"""Sub-exceptions of a group shown (as CPython's default ``max_group_width``)."""
MAX_GROUP_DEPTH = 10
"""Nesting of groups shown (as CPython's default ``max_group_depth``)."""
MAX_EXCEPTIONS = 256
"""Exceptions summarized per report (chains and groups); the finalizer's work is bounded."""

_POSITIONS = sys.version_info >= (3, 11)  # column positions of each frame (co_positions)
_SYNTAX_LAYOUT_313 = sys.version_info >= (3, 13)

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _safe_str(value: object, what: str) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{what} str() failed>"


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    name = cls.__qualname__
    module = cls.__module__
    if module in ("__main__", "builtins"):
        return str(name)
    if not isinstance(module, str):
        module = "<unknown>"
    return f"{module}.{name}"


class _SyntaxDetail:
    __slots__ = ("end_lineno", "end_offset", "filename", "lineno", "msg", "offset", "text")

    def __init__(self, exc: SyntaxError) -> None:
        self.filename = exc.filename
        self.lineno = None if exc.lineno is None else str(exc.lineno)
        end_lineno = getattr(exc, "end_lineno", None)
        self.end_lineno = None if end_lineno is None else str(end_lineno)
        self.text = exc.text
        self.offset = exc.offset
        self.end_offset = getattr(exc, "end_offset", None)
        self.msg = exc.msg


class ExceptionSummary:
    """One exception, reduced to plain values, with what it was chained to."""

    __slots__ = (
        "cause",
        "context",
        "exceptions",
        "group_size",
        "message",
        "notes",
        "stack",
        "suppress_context",
        "syntax",
        "type_name",
    )

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        self.stack: list[traceback.FrameSummary] = []
        self.notes: Optional[list[str]] = None
        self.syntax: Optional[_SyntaxDetail] = None
        self.cause: Optional[ExceptionSummary] = None
        self.context: Optional[ExceptionSummary] = None
        self.suppress_context = False
        self.exceptions: Optional[list[ExceptionSummary]] = None  # an exception group's
        self.group_size = 0  # how many sub-exceptions the group had (a few are kept)

    def walk(self) -> Iterator[ExceptionSummary]:
        """This summary and every one chained to it, each once."""
        seen: set[int] = set()
        todo = [self]
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            yield node
            todo.extend(n for n in (node.cause, node.context) if n is not None)
            todo.extend(node.exceptions or ())

    # -- text, in the reporter thread ----------------------------------------------

    def format(self) -> str:
        """The traceback as ``traceback.format_exception`` prints it."""
        return "".join(_Printer().chain(self))

    def exception_only(self) -> list[str]:
        """The last lines: the exception line (with a syntax error's excerpt) and notes."""
        lines: list[str] = []
        if self.syntax is not None:
            lines.extend(_syntax_error_lines(self.type_name, self.syntax))
        elif self.message:
            lines.append(f"{self.type_name}: {self.message}\n")
        else:
            lines.append(f"{self.type_name}\n")
        lines.extend(self.notes or ())
        return lines


# -- building, inside the finalizer ---------------------------------------------------


def summarize(exc: BaseException) -> ExceptionSummary:
    """The summary of ``exc`` and of the exceptions it is chained to or groups.

    Visits them in the order ``traceback.TracebackException`` does (each exception's
    cause, context and members first, then their own), so that an exception reached
    twice is shown where CPython shows it.
    """
    seen: set[int] = set()
    root = _summary(exc, seen)
    budget = MAX_EXCEPTIONS - 1
    todo: list[tuple[ExceptionSummary, BaseException]] = [(root, exc)]
    while todo:
        node, current = todo.pop()
        cause, context = current.__cause__, current.__context__
        node.suppress_context = bool(current.__suppress_context__)
        if cause is not None and id(cause) not in seen and budget > 0:
            node.cause = _summary(cause, seen)
            budget -= 1
            todo.append((node.cause, cause))
        if context is not None and id(context) not in seen and budget > 0:
            node.context = _summary(context, seen)
            budget -= 1
            todo.append((node.context, context))
        members = getattr(current, "exceptions", None) if _is_group(current) else None
        if isinstance(members, tuple):
            node.group_size = len(members)
            node.exceptions = []
            for member in members:
                if not isinstance(member, BaseException):
                    continue
                if len(node.exceptions) >= MAX_GROUP_WIDTH or budget <= 0:
                    seen.add(id(member))  # not shown ("and N more"), but met
                    continue
                # A group shows each of its members, even one already shown elsewhere.
                summary = _summary(member, seen)
                budget -= 1
                node.exceptions.append(summary)
                todo.append((summary, member))
    return root


def _summary(exc: BaseException, seen: set[int]) -> ExceptionSummary:
    """The summary of ``exc`` alone (its chain is filled in by :func:`summarize`)."""
    seen.add(id(exc))
    summary = ExceptionSummary(_type_name(exc), _safe_str(exc, "exception"))
    summary.stack = _frames(exc.__traceback__)
    summary.notes = _notes(exc)
    if isinstance(exc, SyntaxError):
        summary.syntax = _SyntaxDetail(exc)
    return summary


_BASE_GROUP: Optional[type] = getattr(builtins, "BaseExceptionGroup", None)  # 3.11+


def _is_group(exc: BaseException) -> bool:
    return _BASE_GROUP is not None and isinstance(exc, _BASE_GROUP)


def _notes(exc: BaseException) -> Optional[list[str]]:
    """The lines a traceback prints for the exception's notes (3.11+), or None."""
    if not _POSITIONS:  # notes are printed from 3.11 on
        return None
    try:
        notes = getattr(exc, "__notes__", None)
    except Exception as error:
        return [f"Ignored error getting __notes__: {_safe_repr(error)}\n"]
    if notes is None:
        return None
    if isinstance(notes, collections.abc.Sequence) and not isinstance(notes, (str, bytes)):
        return [line + "\n" for note in notes for line in _safe_str(note, "note").split("\n")]
    # Not a list of notes: its repr (3.11 prints it without a line end).
    return [_safe_repr(notes, "__notes__") + ("" if sys.version_info < (3, 12) else "\n")]


def _safe_repr(value: object, what: str = "__notes__") -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{what} repr() failed>"


def _frames(tb: Any) -> list[traceback.FrameSummary]:
    """One FrameSummary per traceback entry, with the columns tracebacks show (3.11+)."""
    entries: list[traceback.FrameSummary] = []
    limit = getattr(sys, "tracebacklimit", None)
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        lineno = tb.tb_lineno
        end_lineno = colno = end_colno = None
        if _POSITIONS and tb.tb_lasti >= 0:
            try:
                positions = next(itertools.islice(code.co_positions(), tb.tb_lasti // 2, None))
            except (StopIteration, ValueError):
                positions = (None, None, None, None)
            if positions[0] is not None:
                lineno = positions[0]
            end_lineno, colno, end_colno = positions[1], positions[2], positions[3]
        try:
            # Lets the source of a module loaded from a zip file be read later, as
            # traceback does (keeps the module's loader, never its frame).
            linecache.lazycache(code.co_filename, frame.f_globals)
        except Exception:
            pass
        # Columns (3.11+) make the ^^^^ under the failing expression.
        columns: dict[str, Any] = (
            {"end_lineno": end_lineno, "colno": colno, "end_colno": end_colno} if _POSITIONS else {}
        )
        entry = traceback.FrameSummary(
            code.co_filename, lineno, code.co_name, lookup_line=False, **columns
        )
        entries.append(entry)
        tb = tb.tb_next
    if isinstance(limit, int):
        entries = entries[-limit:] if limit > 0 else []
    return entries


# -- text ------------------------------------------------------------------------------


def _syntax_error_lines(type_name: str, detail: _SyntaxDetail) -> list[str]:
    lines: list[str] = []
    suffix = ""
    if detail.lineno is not None:
        lines.append(f'  File "{detail.filename or "<string>"}", line {detail.lineno}\n')
    elif detail.filename is not None:
        suffix = f" ({detail.filename})"
    text = detail.text
    if isinstance(text, str):
        stripped_right = text.rstrip("\n")
        shown = stripped_right.lstrip(" \n\f")
        spaces = len(stripped_right) - len(shown)
        caret = _caret_line(detail, stripped_right, shown, spaces)
        lines.append(f"    {shown}\n")
        if caret is not None:
            lines.append(caret)
    lines.append(f"{type_name}: {detail.msg or '<no detail available>'}{suffix}\n")
    return lines


def _caret_line(detail: _SyntaxDetail, text: str, shown: str, spaces: int) -> Optional[str]:
    offset = detail.offset
    if not isinstance(offset, int):
        return None
    end_offset = detail.end_offset if detail.end_offset not in (None, 0) else offset
    if _SYNTAX_LAYOUT_313:
        if detail.lineno != detail.end_lineno:
            end_offset = len(text) + 1
        full = detail.text or ""
        if full and offset > len(full):
            offset = len(text) + 1
        if full and isinstance(end_offset, int) and end_offset > len(full):
            end_offset = len(text) + 1
        if not isinstance(end_offset, int) or offset >= end_offset or end_offset < 0:
            end_offset = offset + 1
    elif not isinstance(end_offset, int) or end_offset in (offset, -1):
        end_offset = offset + 1
    start = offset - 1 - spaces
    end = end_offset - 1 - spaces
    if start < 0:
        return None
    padding = "".join(c if c.isspace() else " " for c in shown[:start])
    return f"    {padding}{'^' * (end - start)}\n"


class _Printer:
    """Lays out a chain of summaries as CPython does, exception groups boxed."""

    def __init__(self) -> None:
        self.group_depth = 0
        self.need_close = False

    def _indent(self) -> str:
        return "  " * self.group_depth

    def _emit(self, texts: list[str], margin: str = "|") -> Iterator[str]:
        prefix = self._indent()
        if self.group_depth:
            prefix += margin + " "
        for text in texts:
            yield "".join(prefix + line for line in text.splitlines(keepends=True))

    def chain(self, summary: ExceptionSummary) -> Iterator[str]:
        # Oldest first: each exception, then how the next one relates to it.
        links: list[tuple[Optional[str], ExceptionSummary]] = []
        node: Optional[ExceptionSummary] = summary
        while node is not None and len(links) <= MAX_EXCEPTIONS:
            if node.cause is not None:
                links.append((_CAUSE, node))
                node = node.cause
            elif node.context is not None and not node.suppress_context:
                links.append((_CONTEXT, node))
                node = node.context
            else:
                links.append((None, node))
                node = None
        for message, node in reversed(links):
            if message is not None:
                yield from self._emit([message])
            yield from self._one(node)

    def _one(self, node: ExceptionSummary) -> Iterator[str]:
        stack = traceback.StackSummary.from_list(node.stack)
        if node.exceptions is None:
            if node.stack:
                yield from self._emit(["Traceback (most recent call last):\n"])
                yield from self._emit(stack.format())
            yield from self._emit(node.exception_only())
            return
        if self.group_depth > MAX_GROUP_DEPTH:
            yield from self._emit([f"... (max_group_depth is {MAX_GROUP_DEPTH})\n"])
            return
        top = self.group_depth == 0
        if top:
            self.group_depth += 1
        if node.stack:
            yield from self._emit(
                ["Exception Group Traceback (most recent call last):\n"], "+" if top else "|"
            )
            yield from self._emit(stack.format())
        yield from self._emit(node.exception_only())
        shown = node.group_size if node.group_size <= MAX_GROUP_WIDTH else MAX_GROUP_WIDTH + 1
        self.need_close = False
        for index in range(shown):
            last = index == shown - 1
            if last:
                self.need_close = True
            truncated = index >= MAX_GROUP_WIDTH
            title = "..." if truncated else str(index + 1)
            corner = "+-" if index == 0 else "  "
            yield f"{self._indent()}{corner}+---------------- {title} ----------------\n"
            self.group_depth += 1
            if truncated:
                more = node.group_size - MAX_GROUP_WIDTH
                yield from self._emit([f"and {more} more exception{'s' if more > 1 else ''}\n"])
            elif index < len(node.exceptions):
                yield from self.chain(node.exceptions[index])
            if last and self.need_close:
                yield f"{self._indent()}+------------------------------------\n"
                self.need_close = False
            self.group_depth -= 1
        if top:
            self.group_depth = 0
