"""Rows looked up by a pair of columns, in a form both databases answer from an index.

SQLite answers ``(a, b) IN ((?, ?), ...)`` by scanning the whole of the
pair's index, so such a lookup grows with the table; ``a = ? AND b IN (...)``
is one seek per value. The pairs are therefore grouped by their first
element (tests/test_query_plans.py checks the plans).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, bindparam, false, or_
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import Select

First = TypeVar("First", bound=Hashable)
Second = TypeVar("Second", bound=Hashable)


def by_first(pairs: Iterable[tuple[First, Second]]) -> dict[First, list[Second]]:
    """The second elements of ``pairs`` under each first one, both sorted.

    >>> by_first([("b", 2), ("a", 3), ("b", 1), ("b", 2)])
    {'a': [3], 'b': [1, 2]}
    """
    grouped: dict[First, set[Second]] = {}
    for first, second in pairs:
        grouped.setdefault(first, set()).add(second)
    return {first: sorted(grouped[first]) for first in sorted(grouped)}  # type: ignore[type-var]


def pair_condition(first: ColumnElement, second: ColumnElement) -> ColumnElement[bool]:
    """``first = :first AND second IN :seconds``, for a statement built once and run by ``select_pairs``."""
    return and_(first == bindparam("first"), second.in_(bindparam("seconds", expanding=True)))


def select_pairs(conn: Connection, statement: Select, pairs: Iterable[tuple[Any, Any]],
                 **parameters: Any) -> list[Row]:
    """The rows of ``statement`` (whose condition includes ``pair_condition``) for ``pairs``: one query per first element."""
    rows: list[Row] = []
    for first, seconds in by_first(pairs).items():
        rows.extend(conn.execute(statement, {**parameters, "first": first, "seconds": seconds}))
    return rows


def pairs_in(first: ColumnElement, second: ColumnElement, pairs: Iterable[tuple[Any, Any]]) -> ColumnElement[bool]:
    """``(first, second)`` is one of ``pairs``, as a condition built for one query."""
    grouped = by_first(pairs)
    if not grouped:
        return false()
    return or_(*(and_(first == value, second.in_(seconds)) for value, seconds in grouped.items()))
