"""The traceback text of a lost task's exception is the text CPython prints for it.

Each case raises a real exception and compares the agent's summary, formatted, with
``traceback.format_exception`` on the same exception: chains, groups, notes, columns.
The only difference allowed is CPython's "Did you mean" suggestion, which the agent
leaves out on purpose (it runs user code and imports in a finalizer).
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable

import pytest
from asyncio_agent.exception_summary import summarize


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class Holder:
    value = 1


def _nested(depth: int) -> None:
    if depth == 0:
        numbers = {"a": 1}
        print(numbers["a"] + numbers["b"])  # a KeyError with columns under the subscript
    _nested(depth - 1)


def _caught(make: Callable[[], None]) -> BaseException:
    try:
        make()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def _cause() -> None:
    try:
        _nested(2)
    except KeyError as exc:
        raise ValueError("while reading the config") from exc


def _context() -> None:
    try:
        _nested(1)
    except KeyError:
        raise ValueError("while handling")  # noqa: B904 - implicit chaining is the case


def _from_none() -> None:
    try:
        _nested(1)
    except KeyError:
        raise ValueError("context hidden") from None


def _cycle() -> None:
    first = ValueError("first")
    second = TypeError("second")
    first.__context__ = second
    second.__context__ = first
    raise first


def _unprintable() -> None:
    raise Unprintable()


def _empty() -> None:
    raise RuntimeError


def _attribute() -> None:
    Holder().valeu  # type: ignore[attr-defined]  # noqa: B018 - CPython suggests "value"


def _multiline() -> None:
    total = 1 + int("nope")
    print(total)


def _syntax() -> None:
    compile("x = (1,\n  2 +* 3)\n", "<config>", "exec")


CASES: dict[str, Callable[[], None]] = {
    "nested frames with columns": lambda: _nested(3),
    "raise from": _cause,
    "implicit context": _context,
    "from None": _from_none,
    "a cycle of contexts": _cycle,
    "str() fails": _unprintable,
    "no message": _empty,
    "attribute error": _attribute,
    "multi-line expression": _multiline,
    "syntax error": _syntax,
}

if sys.version_info >= (3, 11):

    def _notes() -> None:
        exc = ValueError("with notes")
        exc.add_note("first note")
        exc.add_note("second\nnote on two lines")
        raise exc

    def _odd_notes() -> None:
        exc = ValueError("odd notes")
        exc.__notes__ = 42  # type: ignore[attr-defined]
        raise exc

    def _group() -> None:
        errors: list[Exception] = []
        for n in range(3):
            try:
                _nested(n)
            except KeyError as exc:
                errors.append(exc)
        inner = ExceptionGroup("inner", [ValueError("v"), TypeError("t")])  # noqa: F821
        raise ExceptionGroup("outer", [*errors, inner])  # noqa: F821

    def _wide_group() -> None:
        raise ExceptionGroup("wide", [ValueError(n) for n in range(20)])  # noqa: F821

    def _deep_group() -> None:
        group: BaseException = ValueError("bottom")
        for level in range(13):
            group = ExceptionGroup(f"level {level}", [group])  # noqa: F821
        raise group

    def _group_from() -> None:
        try:
            _nested(0)
        except KeyError as exc:
            raise ExceptionGroup("wrapped", [exc]) from exc  # noqa: F821

    CASES.update(
        {
            "notes": _notes,
            "notes that are not a list": _odd_notes,
            "exception group": _group,
            "a group wider than 15": _wide_group,
            "groups deeper than 10": _deep_group,
            "a group raised from its member": _group_from,
        }
    )

_SUGGESTION = re.compile(r"\. Did you mean: '[^']*'\?")


@pytest.mark.parametrize("case", sorted(CASES))
def test_traceback_text_is_cpythons(case: str) -> None:
    exc = _caught(CASES[case])
    expected = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert summarize(exc).format() == _SUGGESTION.sub("", expected)


def test_summary_keeps_no_exception_traceback_or_frame() -> None:
    exc = _caught(_cause)
    summary = summarize(exc)
    kept = [
        value
        for node in summary.walk()
        for name in node.__slots__
        for value in [getattr(node, name)]
    ]
    frames = [entry for node in summary.walk() for entry in node.stack]
    assert not any(isinstance(v, (BaseException, type(exc.__traceback__))) for v in kept)
    assert all(type(getattr(entry, "locals", None)) is type(None) for entry in frames)
    assert {node.type_name for node in summary.walk()} == {"ValueError", "KeyError"}


def test_no_name_suggestion_is_computed() -> None:
    # The object's __dir__ is user code: CPython's traceback calls it to suggest a name.
    called: list[str] = []

    class Watched:
        def __dir__(self) -> list[str]:
            called.append("dir")
            return ["value"]

    exc = _caught(lambda: Watched().valeu)  # type: ignore[attr-defined]
    summarize(exc).format()
    assert called == []
    traceback.format_exception(type(exc), exc, exc.__traceback__)
    if sys.version_info >= (3, 12):
        assert called == ["dir"]  # (what the agent avoids)
