"""The cron expression dialect: fields parsed into a :class:`Spec`, which finds the next
matching naive wall time. Time zones, DST and firing live in :mod:`dagengine.triggers.cron`,
whose module docs describe the dialect this implements."""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

__all__ = ["CronSyntaxError", "Spec", "parse"]

#: The Gregorian calendar repeats every 400 years: a day pattern with no match in 401 years
#: from any date has none ever.
_HORIZON_YEARS: Final = 401


class CronSyntaxError(Exception):
    """A field of an expression is invalid; the message names the field and the item."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int  # the largest value an item may name
    star_high: int  # where ``*`` and ``N/S`` end (day-of-week: 6, though 7 is Sunday too)
    names: Mapping[str, int]


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_SECONDS = _Field("second", 0, 59, 59, {})
_MINUTES = _Field("minute", 0, 59, 59, {})
_HOURS = _Field("hour", 0, 23, 23, {})
_DOM = _Field("day-of-month", 1, 31, 31, {})
_MONTH = _Field("month", 1, 12, 12, {n: i for i, n in enumerate(_MONTHS, start=1)})
_DOW = _Field("day-of-week", 0, 7, 6, {n: i for i, n in enumerate(_WEEKDAYS)})
_DOW_SPECIAL = re.compile(r"^([0-9a-z]+)(?:(l)|#([0-9]+))$")


def _value(field: _Field, text: str, item: str) -> int:
    if text in field.names:
        return field.names[text]
    if not text.isdigit() or not text.isascii():
        if field.names:
            names = list(field.names)
            known = f"{names[0]}-{names[-1]}"
            raise CronSyntaxError(
                f"{field.name} field: {item!r}: {text!r} is neither a number nor a name ({known})"
            )
        raise CronSyntaxError(f"{field.name} field: {item!r}: {text!r} is not a number")
    value = int(text)
    if not field.low <= value <= field.high:
        raise CronSyntaxError(
            f"{field.name} field: {item!r}: {value} is out of range {field.low}-{field.high}"
        )
    return value


def _step(field: _Field, text: str, item: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise CronSyntaxError(f"{field.name} field: {item!r}: step {text!r} is not a number")
    step = int(text)
    if step < 1:
        raise CronSyntaxError(f"{field.name} field: {item!r}: the step must be at least 1")
    return step


def _plain_item(field: _Field, item: str) -> tuple[set[int], bool]:
    """``*``, ``?``, ``N``, ``A-B``, each with an optional ``/S``: the values it names and
    whether it is unrestricted (``*``, ``?``, ``*/1``)."""
    text = item.lower()
    base, slash, step_text = text.partition("/")
    if "/" in step_text:
        raise CronSyntaxError(f"{field.name} field: {item!r}: more than one '/'")
    step = _step(field, step_text, item) if slash else 1
    if base in ("*", "?"):
        low, high = field.low, field.star_high
        unrestricted = step == 1
    elif "-" in base:
        first, _, last = base.partition("-")
        if "-" in last:
            raise CronSyntaxError(f"{field.name} field: {item!r}: more than one '-'")
        low, high = _value(field, first, item), _value(field, last, item)
        if low > high:
            raise CronSyntaxError(
                f"{field.name} field: {item!r}: the range runs backwards "
                f"(write {high}-{low}, or a list such as {low}-{field.high},{field.low}-{high})"
            )
        unrestricted = False
    else:
        low = _value(field, base, item)
        high = max(field.star_high, low) if slash else low
        unrestricted = False
    values = set(range(low, high + 1, step))
    if field is _DOW and 7 in values:
        values = (values - {7}) | {0}
    return values, unrestricted


@dataclass(frozen=True)
class _Days:
    """The day-of-month and day-of-week fields, matched together."""

    days: frozenset[int]
    last_day: bool  # day-of-month ``L``
    weekdays: frozenset[int]  # 0 = Sunday
    last_weekdays: frozenset[int]  # ``5L``
    nth_weekdays: frozenset[tuple[int, int]]  # ``5#2`` -> (5, 2)
    dom_unrestricted: bool
    dow_unrestricted: bool

    def matches(self, day: date) -> bool:
        month_end = 0
        if self.last_day or self.last_weekdays:
            month_end = calendar.monthrange(day.year, day.month)[1]
        dom = day.day in self.days or (self.last_day and day.day == month_end)
        weekday = day.isoweekday() % 7
        dow = (
            weekday in self.weekdays
            or (weekday in self.last_weekdays and day.day + 7 > month_end)
            or (weekday, (day.day + 6) // 7) in self.nth_weekdays
        )
        if self.dom_unrestricted or self.dow_unrestricted:
            return dom and dow
        return dom or dow


def _field_items(field: _Field, text: str) -> list[str]:
    items = text.split(",")
    if any(not item for item in items):
        raise CronSyntaxError(f"{field.name} field: {text!r} has an empty list item")
    return items


def _refuse_specials(field: _Field, item: str) -> None:
    """``L``, ``W`` and ``#`` outside the forms the day fields support."""
    lower = item.lower()
    if "#" in lower:
        where = "day-of-week items such as 1#2" if field is not _DOW else "D#N, N 1-5"
        raise CronSyntaxError(f"{field.name} field: {item!r}: '#' is only supported as {where}")
    if field is _DOM and "w" in lower:
        raise CronSyntaxError(
            f"{field.name} field: {item!r}: 'W' (nearest weekday) is not supported"
        )
    if field in (_SECONDS, _MINUTES, _HOURS) and ("l" in lower or "w" in lower):
        raise CronSyntaxError(
            f"{field.name} field: {item!r}: 'L' and 'W' are only supported in the day fields"
        )
    if field is _DOM and "l" in lower:
        raise CronSyntaxError(
            f"{field.name} field: {item!r}: 'L' must stand alone in day-of-month (the last "
            "day of the month); offsets and steps such as L-3 or L/2 are not supported"
        )
    if field is _DOW and lower == "l":
        raise CronSyntaxError(
            f"{field.name} field: {item!r}: 'L' alone is not supported in day-of-week; write "
            "DL for the last such weekday of the month (5L: the last Friday)"
        )
    if field is _DOW and "l" in lower:
        raise CronSyntaxError(
            f"{field.name} field: {item!r}: 'L' is only supported as DL (5L: the last Friday "
            "of the month), without a range or a step"
        )


def _parse_plain(field: _Field, text: str) -> tuple[tuple[int, ...], bool]:
    values: set[int] = set()
    unrestricted = False
    for item in _field_items(field, text):
        _refuse_specials(field, item)
        named, star = _plain_item(field, item)
        values |= named
        unrestricted = unrestricted or star
    return tuple(sorted(values)), unrestricted


def _parse_days(dom_text: str, dow_text: str) -> _Days:
    days: set[int] = set()
    last_day = dom_unrestricted = False
    for item in _field_items(_DOM, dom_text):
        if item.lower() == "l":
            last_day = True
            continue
        _refuse_specials(_DOM, item)
        named, star = _plain_item(_DOM, item)
        days |= named
        dom_unrestricted = dom_unrestricted or star
    weekdays: set[int] = set()
    last_weekdays: set[int] = set()
    nth: set[tuple[int, int]] = set()
    dow_unrestricted = False
    for item in _field_items(_DOW, dow_text):
        special = _DOW_SPECIAL.match(item.lower())
        if special is not None:
            weekday = _value(_DOW, special.group(1), item) % 7
            if special.group(2):
                last_weekdays.add(weekday)
            else:
                n = int(special.group(3))
                if not 1 <= n <= 5:
                    raise CronSyntaxError(
                        f"day-of-week field: {item!r}: the week number must be 1-5"
                    )
                nth.add((weekday, n))
            continue
        _refuse_specials(_DOW, item)
        named, star = _plain_item(_DOW, item)
        weekdays |= named
        dow_unrestricted = dow_unrestricted or star
    return _Days(
        frozenset(days), last_day, frozenset(weekdays), frozenset(last_weekdays),
        frozenset(nth), dom_unrestricted, dow_unrestricted,
    )  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """A parsed expression: the matching values of each field."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    days: _Days

    def time_from(self, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
        """The first matching time of day at or after ``hour:minute:second``."""
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        i = bisect_left(hours, hour)
        if i == len(hours):
            return None
        if hours[i] > hour:
            return hours[i], minutes[0], seconds[0]
        j = bisect_left(minutes, minute)
        if j < len(minutes):
            if minutes[j] > minute:
                return hour, minutes[j], seconds[0]
            k = bisect_left(seconds, second)
            if k < len(seconds):
                return hour, minute, seconds[k]
            if j + 1 < len(minutes):
                return hour, minutes[j + 1], seconds[0]
        if i + 1 < len(hours):
            return hours[i + 1], minutes[0], seconds[0]
        return None

    def next_wall(self, start: datetime) -> datetime | None:
        """The first matching naive wall time at or after naive ``start`` (whole seconds),
        or ``None`` if there is none within :data:`_HORIZON_YEARS`."""
        day = start.date()
        clock: tuple[int, int, int] | None = (start.hour, start.minute, start.second)
        end = date(min(day.year + _HORIZON_YEARS, 9999), 1, 1)
        first = (self.hours[0], self.minutes[0], self.seconds[0])
        while day < end:
            if day.month not in self.months:
                day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
                clock = None
                continue
            if self.days.matches(day):
                at = first if clock is None else self.time_from(*clock)
                if at is not None:
                    return datetime(day.year, day.month, day.day, *at)
            day += timedelta(days=1)
            clock = None
        return None


def parse(expression: str) -> Spec:
    """Parse the text of an expression (no descriptor) into a :class:`Spec`."""
    fields = expression.split()
    if fields and re.match(r"^(cron_)?tz=", fields[0], re.IGNORECASE):
        raise CronSyntaxError(
            f"a {fields[0].partition('=')[0]}= prefix is not supported: pass the time zone "
            "as the timezone argument"
        )
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise CronSyntaxError(
            f"{len(fields)} fields: use 5 (min hour dom mon dow), 6 with seconds first, or a "
            "descriptor like @hourly"
        )
    seconds, _ = _parse_plain(_SECONDS, fields[0])
    minutes, _ = _parse_plain(_MINUTES, fields[1])
    hours, _ = _parse_plain(_HOURS, fields[2])
    months, _ = _parse_plain(_MONTH, fields[4])
    return Spec(seconds, minutes, hours, frozenset(months), _parse_days(fields[3], fields[5]))
