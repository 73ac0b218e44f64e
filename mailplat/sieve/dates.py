"""
date and index (RFC 5260): the `date` test on a header field's date,
`currentdate` on the time of delivery, each comparing one date-part;
`:index N [:last]` picks one occurrence of a field in `header`, `address`
and `date`.
"""

import datetime
import email.utils
import re
import time

from mailplat.sieve.core import MATCH_GROUP, MATCHING, _check_match, _part, compare
from mailplat.sieve.engine import TESTS, extension, test

extension("date")
extension("index")

DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601", "std11", "zone", "weekday")
_ZONE = re.compile(r"^[+-][0-9]{4}$")


def _zone_of(text):
    sign = -1 if text[0] == "-" else 1
    return datetime.timezone(sign * datetime.timedelta(hours=int(text[1:3]), minutes=int(text[3:5])))


def _zone_text(tz, when):
    offset = when.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def date_part(when, part):
    """RFC 5260 4.2: one part of an aware datetime, as the text the test compares."""
    if part == "year":
        return f"{when.year:04d}"
    if part == "month":
        return f"{when.month:02d}"
    if part == "day":
        return f"{when.day:02d}"
    if part == "date":
        return f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
    if part == "julian":
        # Modified Julian Day: days since 1858-11-17.
        return str((when.date() - datetime.date(1858, 11, 17)).days)
    if part == "hour":
        return f"{when.hour:02d}"
    if part == "minute":
        return f"{when.minute:02d}"
    if part == "second":
        return f"{when.second:02d}"
    if part == "time":
        return f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    if part == "iso8601":
        return when.isoformat(timespec="seconds")
    if part == "std11":
        return email.utils.format_datetime(when)
    if part == "zone":
        return _zone_text(when.tzinfo, when)
    if part == "weekday":
        return str((when.weekday() + 1) % 7)  # Sunday is 0
    raise ValueError(part)


def _check_date(node, checker):
    part = node.args[-2]
    if part.lower() not in DATE_PARTS:
        return f"unknown date-part {part!r}"
    zone = node.tags.get("zone")
    if zone is not None and not _ZONE.match(zone):
        return f":zone must be like +0100, not {zone!r}"
    if "zone" in node.tags and "originalzone" in node.tags:
        return "only one of :zone and :originalzone"
    return _check_index(node, checker) or _check_match(node, checker)


def _check_index(node, checker):
    if "last" in node.tags and "index" not in node.tags:
        return ":last needs :index"
    if "index" in node.tags:
        if "index" not in checker.required:
            return ':index needs require "index"'
        if node.tags["index"] < 1:
            return ":index counts from 1"
    return None


def pick(node, values):
    """RFC 5260 6: the one occurrence `:index N [:last]` names, or all of them."""
    if "index" not in node.tags:
        return values
    n = node.tags["index"]
    if n > len(values):
        return []
    return [values[-n] if "last" in node.tags else values[n - 1]]


def _shift(run, node, when):
    if "originalzone" in node.tags:
        return when
    if "zone" in node.tags:
        return when.astimezone(_zone_of(node.tags["zone"]))
    return when.astimezone()  # RFC 5260 4.1: the server's local zone


DATE_TAGS = dict(MATCHING, zone="string", originalzone=None, index="number", last=None)


@test("date", extension="date", tags=DATE_TAGS, exclusive=(MATCH_GROUP,), positional=("string", "string", "string-list"),
      check=_check_date)
def _date(run, node):
    name, part = run.x(node.args[0]), run.x(node.args[1]).lower()
    values = []
    for value in pick(node, run.message.headers(name)):
        if name.lower() == "received":
            value = value.rpartition(";")[2]  # RFC 5260 4.1: the date after the last ';'
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            continue  # RFC 5260 4.1: a field whose date can't be parsed is skipped
        if when is None:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        values.append(date_part(_shift(run, node, when), part))
    return compare(node, values, run.x(node.args[2]), run)


def _check_currentdate(node, checker):
    if node.args[0].lower() not in DATE_PARTS:
        return f"unknown date-part {node.args[0]!r}"
    zone = node.tags.get("zone")
    if zone is not None and not _ZONE.match(zone):
        return f":zone must be like +0100, not {zone!r}"
    return _check_match(node, checker)


@test("currentdate", extension="date", tags=dict(MATCHING, zone="string"), exclusive=(MATCH_GROUP,),
      positional=("string", "string-list"), check=_check_currentdate)
def _currentdate(run, node):
    now = run.environment.get("now", time.time())
    when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    when = when.astimezone(_zone_of(node.tags["zone"])) if "zone" in node.tags else when.astimezone()
    return compare(node, [date_part(when, run.x(node.args[0]).lower())], run.x(node.args[1]), run)


# :index for header and address (RFC 5260 6): their specs take the two tags more.
def _with_index(name, occurrences):
    """`occurrences(run, field, node)`: a list per occurrence of the field, of the values it gives."""
    spec = TESTS[name]
    spec.tags.update(index="number", last=None)
    base_check = spec.check

    def check(node, checker):
        return _check_index(node, checker) or (base_check(node, checker) if base_check else None)

    spec.check = check
    plain = spec.run

    def run_it(run, node):
        if "index" not in node.tags:
            return plain(run, node)
        values = []
        for field in run.x(node.args[0]):
            for occurrence in pick(node, occurrences(run, field, node)):
                values += [v for v in occurrence if v is not None]
        return compare(node, values, run.x(node.args[1]), run)

    spec.run = run_it


_with_index("header", lambda run, field, node: [[v] for v in run.message.headers(field)])
_with_index(
    "address",
    lambda run, field, node: [[_part(a, node) for a in run.message.addresses_of(v)] for v in run.message.raw_headers(field)],
)
