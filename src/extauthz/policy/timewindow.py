"""Time windows (``extauthz.io/time-window``): wall-clock windows in the tenant's time zone.

Grammar of one value (spaces around ``,`` and ``-`` are not allowed, day names are English
three-letter abbreviations in any case)::

    window  = [days " "] time "-" time        ; no days: every day
    days    = day-set *("," day-set)
    day-set = day | day "-" day                ; ranges wrap: Fri-Mon = Fri,Sat,Sun,Mon
    day     = "Mon" | "Tue" | "Wed" | "Thu" | "Fri" | "Sat" | "Sun"
    time    = HH ":" MM                        ; 00:00 to 23:59; an end may be 24:00

A window is half-open: ``08:00-22:00`` holds from 08:00:00 up to, not including, 22:00:00.
An end before its start is an overnight window, and belongs to the day it starts on:
``Fri 22:00-06:00`` holds from Friday 22:00 to Saturday 06:00 (and not on Friday 00:00-06:00).
Equal start and end are refused (write ``00:00-24:00`` for a whole day).

The instant of the request is turned into wall-clock time in the tenant's IANA zone with the
zone database, so daylight-saving changes move a window with the clock: a window holds when
the local clock shows a time inside it. Around a change an hour of wall-clock time is skipped
(no instant is inside ``Sun 02:00-03:00`` in Europe/Berlin on the spring change) or shown twice
(both instants are inside on the autumn change).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["TimeWindowError", "Windows", "parse_windows", "parse_zone"]

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY: Final = 86_400
_WEEK: Final = 7 * _DAY
_WINDOW: Final = re.compile(r"(?:(?P<days>[A-Za-z,\-]+) )?(?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)")


class TimeWindowError(ValueError):
    """A value that is not a time window, or a time zone that is not known."""


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (from the system, else the ``tzdata`` package)."""
    if not name or name.startswith(("/", ".")) or ".." in name:
        raise TimeWindowError(
            f"unknown time zone {name!r}: expected an IANA name like Europe/Berlin"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeWindowError(
            f"unknown time zone {name!r}: expected an IANA name like Europe/Berlin"
        ) from None


@dataclass(frozen=True, slots=True)
class Windows:
    """Some windows as half-open second-of-week intervals (Monday 00:00 = 0)."""

    zone: ZoneInfo
    spans: tuple[tuple[int, int], ...]

    def __call__(self, when: datetime.datetime) -> bool:
        local = when.astimezone(self.zone)
        second = local.weekday() * _DAY + local.hour * 3600 + local.minute * 60 + local.second
        return any(start <= second < end for start, end in self.spans)


def parse_windows(values: Sequence[str], zone: ZoneInfo) -> Windows:
    """Raises TimeWindowError for the first value that is not a window."""
    spans: list[tuple[int, int]] = []
    for value in values:
        spans.extend(_spans(value))
    return Windows(zone, tuple(sorted(spans)))


def _spans(value: str) -> Iterable[tuple[int, int]]:
    m = _WINDOW.fullmatch(value)
    if m is None:
        raise TimeWindowError(
            f"invalid time window {value!r}: expected like 'Mon-Fri 08:00-22:00' or '22:00-06:00'"
        )
    start, end = _clock(m["start"], value, end=False), _clock(m["end"], value, end=True)
    if start == end:
        raise TimeWindowError(f"invalid time window {value!r}: start and end are equal")
    days = _days(m["days"], value) if m["days"] else range(7)
    length = end - start if end > start else _DAY - start + end
    for day in days:
        first = day * _DAY + start
        last = first + length
        if last <= _WEEK:
            yield first, last
        else:  # Sunday night into Monday morning: wrap around the week
            yield first, _WEEK
            yield 0, last - _WEEK


def _clock(text: str, value: str, *, end: bool) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if (hours, minutes) == (24, 0) and end:
        return _DAY
    if hours > 23 or minutes > 59:
        raise TimeWindowError(f"invalid time window {value!r}: {text} is not a time of day")
    return hours * 3600 + minutes * 60


def _days(text: str, value: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        names = part.split("-")
        if len(names) > 2 or any(n.lower() not in DAYS for n in names):
            raise TimeWindowError(
                f"invalid time window {value!r}: {part!r} is not a day (Mon..Sun) or a range"
            )
        first = DAYS.index(names[0].lower())
        last = DAYS.index(names[-1].lower())
        count = (last - first) % 7 + 1
        out.extend((first + k) % 7 for k in range(count))
    return sorted(set(out))
