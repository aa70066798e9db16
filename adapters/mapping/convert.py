"""Runtime value conversions and validators used by compiled mappings.

Everything here is pure: parse and format dates and times by explicit patterns in a time zone,
and check identity numbers (GB 11643), unified social credit codes (GB 32100), phone numbers,
region codes (GB/T 2260) with ``python-stdnum``. A failing conversion raises :class:`ValueProblem`
carrying a stable code; warnings are returned, never raised.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from stdnum import numdb
from stdnum.cn import ric, uscc
from stdnum.exceptions import ValidationError

__all__ = [
    "CANONICAL_VALIDATORS",
    "DatePattern",
    "ValueProblem",
    "check_certificate_number",
    "check_credit_code",
    "check_id_number",
    "check_phone",
    "check_region",
    "format_timestamp",
    "home_city_of_credit_code",
    "home_city_of_id_number",
    "id_birth_date",
    "id_sex",
    "parse_timestamp",
    "redact",
]


class ValueProblem(Exception):
    """A value cannot be converted or is invalid. ``code`` is stable, ``message`` redacted."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def redact(value: object) -> str:
    """A safe description of a value for messages: its type and length, never its content."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Timestamps and dates

_TOKENS = re.compile(r"yyyy|MM|dd|HH|mm|ss|SSS|XXX|'[^']*'|.", re.DOTALL)
_TOKEN_RX = {
    "yyyy": r"(?P<y>\d{4})",
    "MM": r"(?P<mo>\d{2})",
    "dd": r"(?P<d>\d{2})",
    "HH": r"(?P<h>\d{2})",
    "mm": r"(?P<mi>\d{2})",
    "ss": r"(?P<s>\d{2})",
    "SSS": r"(?P<ms>\d{3})",
    "XXX": r"(?P<tz>Z|[+-]\d{2}:\d{2})",
}
_TOKEN_FMT = {
    "yyyy": "{y:04d}",
    "MM": "{mo:02d}",
    "dd": "{d:02d}",
    "HH": "{h:02d}",
    "mm": "{mi:02d}",
    "ss": "{s:02d}",
    "SSS": "{ms:03d}",
    "XXX": "{tz}",
}
#: The same fields in the generated formatter's f-string (``l``: the local date-time, ``tz``:
#: the offset's text).
_TOKEN_SRC = {
    "yyyy": "{l.year:04d}",
    "MM": "{l.month:02d}",
    "dd": "{l.day:02d}",
    "HH": "{l.hour:02d}",
    "mm": "{l.minute:02d}",
    "ss": "{l.second:02d}",
    "SSS": "{l.microsecond // 1000:03d}",
    "XXX": "{tz}",
}
_LETTERS = re.compile(r"[A-Za-z]")


class DatePattern:
    """A date or date-time pattern such as ``yyyyMMddHHmmss`` or ``yyyy-MM-dd'T'HH:mm:ssXXX``.

    Letters: ``yyyy`` year, ``MM`` month, ``dd`` day, ``HH`` hour (00-23), ``mm`` minute, ``ss``
    second, ``SSS`` milliseconds, ``XXX`` offset (``+08:00`` or ``Z``); text in single quotes is
    literal; any other letter is an error. The keyword ``iso8601`` accepts any ISO 8601 date-time
    with an offset and writes ``yyyy-MM-dd'T'HH:mm:ssXXX``.

    >>> p = DatePattern("yyyyMMddHHmmss")
    >>> p.fields
    frozenset({'y', 'mo', 'd', 'h', 'mi', 's'})
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.iso = pattern == "iso8601"
        if self.iso:
            pattern = "yyyy-MM-dd'T'HH:mm:ssXXX"
        rx, fmt, src, fields = [], [], [], []
        groups: list[str | None] = []  # the field of each piece of src (None: literal text)
        # Fixed-width layout (every token but XXX has a fixed width): parse by slicing.
        pos = 0
        slices: dict[str, tuple[int, int]] | None = {}
        literals: list[tuple[int, str]] = []
        for tok in _TOKENS.findall(pattern):
            if tok in _TOKEN_RX:
                group = _TOKEN_RX[tok].split(">")[0][4:]
                if group in fields:
                    raise ValueError(f"pattern {self.pattern!r} repeats {tok!r}")
                fields.append(group)
                rx.append(_TOKEN_RX[tok])
                fmt.append(_TOKEN_FMT[tok])
                src.append(_TOKEN_SRC[tok])
                groups.append(group)
                if tok == "XXX" or slices is None:
                    slices = None
                else:
                    slices[group] = (pos, pos + len(tok))
                    pos += len(tok)
            elif tok.startswith("'"):
                lit = tok[1:-1]
                rx.append(re.escape(lit))
                fmt.append(lit.replace("{", "{{").replace("}", "}}"))
                src.append(fmt[-1])
                groups.append(None)
                literals.extend((pos + i, ch) for i, ch in enumerate(lit))
                pos += len(lit)
            elif _LETTERS.fullmatch(tok):
                raise ValueError(
                    f"pattern {self.pattern!r}: unknown letter {tok!r} "
                    "(use yyyy MM dd HH mm ss SSS XXX, quote literal text)"
                )
            else:
                rx.append(re.escape(tok))
                fmt.append(tok.replace("{", "{{").replace("}", "}}"))
                src.append(fmt[-1])
                groups.append(None)
                literals.append((pos, tok))
                pos += len(tok)
        self.slices = slices if not self.iso else None
        self.literals = tuple(literals)
        self.width = pos
        self.fields = frozenset(fields)
        if not {"y", "mo", "d"} <= self.fields:
            raise ValueError(f"pattern {self.pattern!r} must contain yyyy, MM and dd")
        self.regex = re.compile("".join(rx))
        self.format = "".join(fmt)
        #: The layout as the body of an f-string over ``l`` and ``tz`` (see ``_renderer``).
        self.source = "".join(src)
        #: That body piece by piece, each with its field (None for literal text).
        self.pieces: tuple[tuple[str | None, str], ...] = tuple(zip(groups, src, strict=True))

    @property
    def lossless_time(self) -> bool:
        """True when a second-precision instant survives format then parse."""
        return {"h", "mi", "s"} <= self.fields

    def __repr__(self) -> str:
        return f"DatePattern({self.pattern!r})"


def format_timestamp(dt: datetime) -> str:
    """Canonical RFC 3339 UTC form, as protobuf JSON writes a Timestamp."""
    return _format_utc(dt.astimezone(UTC).replace(tzinfo=None))


def _format_utc(u: datetime) -> str:
    """:func:`format_timestamp` of a naive datetime that holds UTC: whole seconds, else
    milliseconds, else microseconds (``isoformat`` pads the year to four digits)."""
    us = u.microsecond
    if not us:
        return u.isoformat() + "Z"
    if us % 1000 == 0:
        return u.isoformat(timespec="milliseconds") + "Z"
    return u.isoformat(timespec="microseconds") + "Z"


def parse_timestamp(value: str) -> datetime:
    """Parse a canonical RFC 3339 timestamp (any offset, ``Z`` allowed) into an aware datetime."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueProblem("BAD_TIMESTAMP", "not an RFC 3339 timestamp") from None
    if dt.tzinfo is None:
        raise ValueProblem("BAD_TIMESTAMP", "timestamp has no UTC offset")
    return dt


def _canonical_datetime(dt: datetime) -> str:
    """:func:`format_timestamp` of a city's date-time; BAD_DATETIME past the calendar's ends."""
    try:
        return format_timestamp(dt)
    except OverflowError:
        raise ValueProblem("BAD_DATETIME", "date-time out of range") from None


def make_datetime_parser(pattern: DatePattern, tz: tzinfo) -> Callable[[str], str]:
    """A function turning a city's date-time text into a canonical timestamp string."""
    fullmatch = pattern.regex.fullmatch
    want = pattern.pattern

    if pattern.iso:

        def parse_iso(text: str) -> str:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise ValueProblem(
                    "BAD_DATETIME", "expected an ISO 8601 date-time with offset"
                ) from None
            if dt.tzinfo is None:
                raise ValueProblem("BAD_DATETIME", "ISO 8601 date-time lacks its UTC offset")
            return _canonical_datetime(dt)

        return parse_iso

    if pattern.slices is not None:
        return _fixed_parser(pattern, "datetime", tz)

    def parse(text: str) -> str:
        m = fullmatch(text)
        if m is None:
            raise ValueProblem("BAD_DATETIME", f"expected a date-time as {want!r}")
        g = m.groupdict()
        try:
            zone: tzinfo = tz
            if g.get("tz"):
                zone = _offset(g["tz"])
            dt = datetime(
                int(g["y"]),
                int(g["mo"]),
                int(g["d"]),
                int(g.get("h") or 0),
                int(g.get("mi") or 0),
                int(g.get("s") or 0),
                int(g.get("ms") or 0) * 1000,
                tzinfo=zone,
            )
        except ValueError:
            raise ValueProblem("BAD_DATETIME", "impossible date or time") from None
        return _canonical_datetime(dt)

    return parse


def _offset(text: str) -> tzinfo:
    return (
        datetime.fromisoformat("2000-01-01T00:00:00" + ("+00:00" if text == "Z" else text)).tzinfo
        or UTC
    )


def _offset_text(dt: datetime) -> str:
    """``Z`` or ``+08:00``: the ISO 8601 offset of an aware datetime (no strftime: it is slow)."""
    off = dt.utcoffset()
    secs = int(off.total_seconds()) if off is not None else 0
    if secs == 0:
        return "Z"
    sign = "+" if secs > 0 else "-"
    secs = abs(secs)
    return f"{sign}{secs // 3600:02d}:{secs % 3600 // 60:02d}"


def make_datetime_formatter(pattern: DatePattern, tz: tzinfo) -> Callable[[str], str]:
    """A function turning a canonical timestamp string into the city's date-time text.

    The layout is generated once as an f-string (literal text enters the code only through
    ``repr()``), and the offset text is remembered per offset: ~1.6 against ~2.5 µs per value
    with ``str.format`` and the offset worked out every time.
    """
    wants_offset = "tz" in pattern.fields
    render = _renderer(pattern)
    offsets: dict[timedelta | None, str] = {}

    def exact(value: str) -> str:
        try:
            local = parse_timestamp(value).astimezone(tz)
        except OverflowError:
            raise ValueProblem("BAD_TIMESTAMP", "timestamp out of range in this zone") from None
        if not wants_offset:
            return render(local, "")
        off = local.utcoffset()
        tzs = offsets.get(off)
        if tzs is None:
            tzs = offsets[off] = _offset_text(local)
        return render(local, tzs)

    return _by_utc_hour(pattern, tz, exact)


def _by_utc_hour(
    pattern: DatePattern, tz: tzinfo, exact: Callable[[str], str]
) -> Callable[[str], str]:
    """``exact``, with a fast path for canonical timestamps of whole seconds
    (``YYYY-MM-DDTHH:MM:SSZ``): per UTC hour whose offset in ``tz`` is one whole number of
    hours throughout, the layout's text around its minute and second fields is rendered once,
    and a value's minute and second digits are put in between. Any other value (fractions,
    offsets, an hour not seen yet, anything malformed) takes ``exact``."""
    sub = {"mi": "v[14:16]", "s": "v[17:19]", "ms": "'000'"}
    hour_srcs, between = [""], []
    for group, piece in pattern.pieces:
        if group in sub:
            between.append(sub[group])
            hour_srcs.append("")
        else:
            hour_srcs[-1] += piece
    fields = ", ".join(f"f{piece!r}" for piece in hour_srcs)
    parts = ["c[0]"]  # the hour's texts with the value's digits between them
    for i, digits in enumerate(between, 1):
        parts += [digits, f"c[{i}]"]
    text = " + ".join(parts)
    src = (
        "def render_hour(l, tz):\n"
        f"    return ({fields},)\n"
        "def fmt_dt(v):\n"
        "    if len(v) == 20 and v[19] == 'Z' and v[13] == ':' and v[16] == ':':\n"
        "        c = _hours.get(v[:13])\n"
        "        if (c is not None and v.isascii() and v[14:16].isdigit() and v[14:16] < '60'\n"
        "                and v[17:19].isdigit() and v[17:19] < '60'):\n"
        f"            return {text}\n"
        "    r = _exact(v)\n"
        "    if len(v) == 20 and v[19] == 'Z' and v[:13] not in _hours:\n"
        "        _learn(v)\n"
        "    return r\n"
    )
    hours: dict[str, tuple[str, ...]] = {}
    ns: dict[str, Any] = {"_hours": hours, "_exact": exact}
    exec(compile(src, f"<date layout {pattern.pattern!r} by hour>", "exec"), ns)  # noqa: S102
    render_hour: Callable[[datetime, str], tuple[str, ...]] = ns["render_hour"]

    def learn(value: str) -> None:
        try:
            u0 = parse_timestamp(value).replace(minute=0, second=0, microsecond=0)
            first, last = u0.astimezone(tz), (u0 + _LAST_INSTANT).astimezone(tz)
        except (ValueProblem, OverflowError):
            return
        off = first.utcoffset()
        if off is None or off != last.utcoffset() or off % _HOUR:
            return
        if len(hours) >= 4096:
            hours.clear()
        hours[value[:13]] = render_hour(first, _offset_text(first))

    ns["_learn"] = learn
    fmt_dt: Callable[[str], str] = ns["fmt_dt"]
    return fmt_dt


_LAST_INSTANT = timedelta(minutes=59, seconds=59, microseconds=999999)


def _renderer(pattern: DatePattern) -> Callable[[datetime, str], str]:
    """``render(local, offset_text)``: the pattern's layout of a local datetime."""
    src = f"def render(l, tz):\n    return f{pattern.source!r}\n"
    ns: dict[str, Any] = {}
    exec(compile(src, f"<date layout {pattern.pattern!r}>", "exec"), ns)  # noqa: S102
    render: Callable[[datetime, str], str] = ns["render"]
    return render


class WallClock:
    """Local wall time in one zone -> canonical UTC text, as ``format_timestamp`` of the aware
    datetime (``fold=0`` for ambiguous or skipped times) would give it.

    The zone's UTC offset is looked up once per local hour and remembered, unless it changes
    within that hour (a transition), in which case every such time is converted exactly.
    """

    __slots__ = ("_hours", "tz")

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._hours: dict[tuple[int, int, int, int], timedelta] = {}

    def __call__(self, y: int, mo: int, d: int, h: int, mi: int, s: int, us: int) -> str:
        local = datetime(y, mo, d, h, mi, s, us)  # ValueError for an impossible date or time
        off = self._hours.get((y, mo, d, h))
        if off is None:
            start = datetime(y, mo, d, h, tzinfo=self.tz).utcoffset()
            end = datetime(y, mo, d, h, 59, 59, 999999, tzinfo=self.tz).utcoffset()
            if start is None or start != end:
                return format_timestamp(local.replace(tzinfo=self.tz))
            if len(self._hours) >= 4096:
                self._hours.clear()
            off = self._hours[(y, mo, d, h)] = start
        return _format_utc(local - off)  # OverflowError at the ends of the calendar

    def hour_text(self, y: int, mo: int, d: int, h: int) -> str | None:
        """``YYYY-MM-DDTHH:`` of the UTC time of this local hour's start, once the hour is
        remembered and its offset is a whole number of hours (so minutes and seconds are the
        same in both zones); else None."""
        off = self._hours.get((y, mo, d, h))
        if off is None or off % _HOUR:
            return None
        try:
            return (datetime(y, mo, d, h) - off).isoformat()[:14]
        except OverflowError:
            return None


_HOUR = timedelta(hours=1)


def _fixed_parser(
    pattern: DatePattern, kind: str, tz: tzinfo | None = None
) -> Callable[[str], str]:
    """A parser for a fixed-width pattern, generated once with the offsets as constants.

    ``kind`` is "date" (canonical ``YYYY-MM-DD``) or "datetime" (canonical UTC timestamp).
    Literal characters enter the generated code only through ``repr()``.
    """
    assert pattern.slices is not None
    # Digits must be ASCII ("١" is a digit to str.isdigit). Literal text may not be: with
    # 年/月/日 in the layout, each field is checked on its own.
    ascii_layout = all(ch.isascii() for _, ch in pattern.literals)
    checks = [f"len(t) == {pattern.width}"] + (["t.isascii()"] if ascii_layout else [])
    if not pattern.literals:
        checks.append("t.isdigit()")
    else:
        checks += [f"t[{pos}] == {ch!r}" for pos, ch in pattern.literals]
        checks += [
            f"t[{a}:{b}].isdigit()"
            if ascii_layout
            else f"t[{a}:{b}].isascii() and t[{a}:{b}].isdigit()"
            for a, b in pattern.slices.values()
        ]

    slices = pattern.slices

    def part(group: str) -> str:
        if group not in slices:
            return "0"
        a, b = slices[group]
        return f"int(t[{a}:{b}])"

    code = "BAD_DATE" if kind == "date" else "BAD_DATETIME"
    want = f"expected a {'date' if kind == 'date' else 'date-time'} as {pattern.pattern!r}"
    if kind == "date":
        build = f"_date({part('y')}, {part('mo')}, {part('d')}).isoformat()"
        impossible = "impossible date"
    else:
        build = (
            f"_wall({part('y')}, {part('mo')}, {part('d')}, {part('h')}, "
            f"{part('mi')}, {part('s')}, {part('ms')} * 1000)"
        )
        impossible = "impossible date or time"
    fast, learn = _hour_texts(slices) if kind == "datetime" else ("", "")
    src = (
        "def parse(t):\n"
        f"    if {' and '.join(checks)}:\n"
        f"{fast}"
        "        try:\n"
        f"            r = {build}\n"
        "        except ValueError:\n"
        f"            raise _VP({code!r}, {impossible!r}) from None\n"
        "        except OverflowError:\n"
        f"            raise _VP({code!r}, 'out of range') from None\n"
        f"{learn}"
        "        return r\n"
        f"    raise _VP({code!r}, {want!r})\n"
    )
    ns: dict[str, Any] = {
        "_date": date,
        "_wall": WallClock(tz) if tz is not None else None,
        "_VP": ValueProblem,
        "_hours": {},
    }
    exec(compile(src, f"<date pattern {pattern.pattern!r}>", "exec"), ns)  # noqa: S102
    parser: Callable[[str], str] = ns["parse"]
    return parser


def _hour_texts(slices: dict[str, tuple[int, int]]) -> tuple[str, str]:
    """Generated lines (the fast path, then the learning) that turn a local date-time into its
    UTC text by its local hour: the hour's digits map to ``YYYY-MM-DDTHH:`` in UTC (see
    :meth:`WallClock.hour_text`), and minutes, seconds and milliseconds are copied. Only for
    layouts with two-digit hour, minute and second fields and three-digit milliseconds; a
    minute or second from 60 up, or an hour not seen yet, takes the exact path.

    >>> print(_hour_texts({"y": (0, 4), "mo": (4, 6), "d": (6, 8), "h": (8, 10)})[0].strip())
    p = _hours.get(t[0:10])
            if p is not None:
                return p + '00' + ':' + '00' + 'Z'
    """
    widths = {"y": 4, "mo": 2, "d": 2, "h": 2, "mi": 2, "s": 2, "ms": 3}
    if any(g not in slices for g in ("y", "mo", "d", "h")) or any(
        b - a != widths[g] for g, (a, b) in slices.items()
    ):
        return "", ""
    # The hour's key: its digits in y, mo, d, h order, adjacent slices joined.
    spans: list[list[int]] = []
    for g in ("y", "mo", "d", "h"):
        a, b = slices[g]
        if spans and spans[-1][1] == a:
            spans[-1][1] = b
        else:
            spans.append([a, b])
    key = " + ".join(f"t[{a}:{b}]" for a, b in spans)
    checks = ["p is not None"]
    text = ["p"]
    for g, sep in (("mi", "':'"), ("s", "")):
        if g in slices:
            a, b = slices[g]
            checks.append(f"t[{a}:{b}] < '60'")
            text.append(f"t[{a}:{b}]")
        else:
            text.append("'00'")
        if sep:
            text.append(sep)
    if "ms" in slices:
        a, b = slices["ms"]
        tail = f"('Z' if t[{a}:{b}] == '000' else '.' + t[{a}:{b}] + 'Z')"
    else:
        tail = "'Z'"
    fast = (
        f"        p = _hours.get({key})\n"
        f"        if {' and '.join(checks)}:\n"
        f"            return {' + '.join([*text, tail])}\n"
    )
    h = {g: f"int(t[{a}:{b}])" for g, (a, b) in slices.items()}
    learn = (
        f"        p = _wall.hour_text({h['y']}, {h['mo']}, {h['d']}, {h['h']})\n"
        "        if p is not None:\n"
        "            if len(_hours) >= 4096:\n"
        "                _hours.clear()\n"
        f"            _hours[{key}] = p\n"
    )
    return fast, learn


def make_date_parser(pattern: DatePattern) -> Callable[[str], str]:
    """A function turning a city's date text into canonical ``YYYY-MM-DD``."""
    fullmatch = pattern.regex.fullmatch
    want = pattern.pattern

    if pattern.slices is not None:
        return _fixed_parser(pattern, "date")

    def parse(text: str) -> str:
        m = fullmatch(text)
        if m is None:
            raise ValueProblem("BAD_DATE", f"expected a date as {want!r}")
        try:
            d = date(int(m["y"]), int(m["mo"]), int(m["d"]))
        except ValueError:
            raise ValueProblem("BAD_DATE", "impossible date") from None
        return d.isoformat()

    return parse


def make_date_formatter(pattern: DatePattern) -> Callable[[str], str]:
    """A function turning canonical ``YYYY-MM-DD`` into the city's date text."""
    fmt = pattern.format

    def fmt_date(value: str) -> str:
        try:
            d = date.fromisoformat(value)
        except ValueError:
            raise ValueProblem("BAD_DATE", "expected a canonical date YYYY-MM-DD") from None
        return fmt.format(y=d.year, mo=d.month, d=d.day, h=0, mi=0, s=0, ms=0, tz="")

    return fmt_date


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """A time zone by IANA name (cached)."""
    return ZoneInfo(name)


# ---------------------------------------------------------------------------------------------
# Identity numbers, credit codes, phones, regions

_ID_TYPES = {
    "CERTIFICATE_TYPE_RESIDENT_ID_CARD",
    "CERTIFICATE_TYPE_TEMPORARY_RESIDENT_ID_CARD",
}
_PHONE = re.compile(r"1[3-9]\d{9}|0\d{2,3}-?\d{7,8}", re.ASCII)  # \d: ASCII digits only
_SHA256 = re.compile(r"[0-9a-f]{64}")


@lru_cache(maxsize=8192)
def _region_known_in(region: str, year: int) -> bool:
    try:
        ric.get_birth_place(f"{region}{year:04d}01010000")
    except ValidationError:
        return False
    return True


@lru_cache(maxsize=8192)
def _birth_year(ymd: str) -> int:
    """The year of a ``YYYYMMDD`` date of digits; ValueError when there is no such day.
    Remembered: a few thousand birth dates cover most people (0.8 -> 0.15 µs a number)."""
    return date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:8])).year


def check_id_number(value: str) -> list[tuple[str, str]]:
    """Check a GB 11643 resident identity number with python-stdnum.

    Length, format, check character and birth date are errors (:class:`ValueProblem`,
    code ``INVALID_ID_NUMBER``); a region code that stdnum does not know for the birth year is
    returned as a warning, because its region table rejects real numbers.
    """
    if len(value) != 18:
        raise ValueProblem("INVALID_ID_NUMBER", "ID number must have 18 characters")
    if not (value.isascii() and value[:17].isdigit() and (value[17].isdigit() or value[17] == "X")):
        raise ValueProblem("INVALID_ID_NUMBER", "ID number must be 17 digits and a digit or X")
    if ric.calc_check_digit(value) != value[17]:
        raise ValueProblem("INVALID_ID_NUMBER", "ID number check character is wrong")
    # The format is verified above, so the birth date is read from its digits directly
    # (stdnum's get_birth_date re-normalises the number first, half the cost of the check).
    try:
        year = _birth_year(value[6:14])
    except ValueError:
        raise ValueProblem(
            "INVALID_ID_NUMBER", "ID number holds an impossible birth date"
        ) from None
    if not _region_known_in(value[:6], year):
        return [
            (
                "ID_REGION_NOT_VALID_FOR_BIRTH_YEAR",
                "region code of the ID number is not listed for its birth year",
            )
        ]
    return []


def check_certificate_number(value: str, certificate_type: str | None) -> list[tuple[str, str]]:
    """Check a certificate number according to its type (resident ID cards: GB 11643)."""
    if certificate_type in _ID_TYPES or (certificate_type is None and len(value) == 18):
        return check_id_number(value)
    if not value or len(value) > 64 or not value.isprintable():
        raise ValueProblem("INVALID_CERTIFICATE_NUMBER", "certificate number is malformed")
    return []


def check_credit_code(value: str) -> list[tuple[str, str]]:
    """Check a GB 32100 unified social credit code with python-stdnum."""
    try:
        uscc.validate(value)
    except ValidationError as exc:
        raise ValueProblem(
            "INVALID_CREDIT_CODE", f"unified social credit code is invalid: {_reason(exc)}"
        ) from None
    if value != value.upper().strip():
        raise ValueProblem("INVALID_CREDIT_CODE", "unified social credit code must be uppercase")
    return []


def _reason(exc: ValidationError) -> str:
    return {
        "InvalidLength": "wrong length",
        "InvalidFormat": "wrong format",
        "InvalidChecksum": "wrong check character",
        "InvalidComponent": "unknown component",
    }.get(type(exc).__name__, "invalid")


def check_phone(value: str) -> list[tuple[str, str]]:
    """Check a mainland phone number: 11-digit mobile or 0-prefixed landline."""
    if not _PHONE.fullmatch(value):
        raise ValueProblem("INVALID_PHONE", "phone must be an 11-digit mobile or a landline")
    return []


@lru_cache(maxsize=4096)
def _region_exists(code: str) -> bool:
    return any("county" in props for _, props in numdb.get("cn/loc").info(code))


def check_region(value: str) -> list[tuple[str, str]]:
    """Check a six-digit GB/T 2260 region code against stdnum's region table."""
    if len(value) != 6 or not value.isascii() or not value.isdigit() or not _region_exists(value):
        raise ValueProblem("INVALID_REGION", "not a known six-digit GB/T 2260 region code")
    return []


def check_sha256(value: str) -> list[tuple[str, str]]:
    """Check a lowercase hex SHA-256 digest."""
    if not _SHA256.fullmatch(value):
        raise ValueProblem("INVALID_DIGEST", "digest must be 64 lowercase hex characters")
    return []


#: Built-in validators by name; ``certificate_number`` also looks at the sibling type.
CANONICAL_VALIDATORS: dict[str, Callable[[str], list[tuple[str, str]]]] = {
    "id_number": check_id_number,
    "credit_code": check_credit_code,
    "phone": check_phone,
    "region": check_region,
    "sha256": check_sha256,
}


def prefecture(region: str) -> str:
    """The prefecture-level region of a six-digit code (``440305`` -> ``440300``)."""
    return region[:4] + "00"


def home_city_of_id_number(value: str) -> str:
    """Home city (prefecture region code) of a resident ID number."""
    return prefecture(value[:6])


def home_city_of_credit_code(value: str) -> str:
    """Home city (prefecture region code) of a unified social credit code (positions 3-8)."""
    return prefecture(value[2:8])


def id_birth_date(value: str) -> str:
    """Birth date ``YYYY-MM-DD`` held in a valid resident ID number."""
    try:
        return ric.get_birth_date(value).isoformat()
    except ValidationError:
        raise ValueProblem(
            "INVALID_ID_NUMBER", "ID number holds an impossible birth date"
        ) from None


def id_sex(value: str) -> str:
    """Canonical sex held in a resident ID number (odd sequence: male)."""
    if len(value) != 18 or not value.isascii() or not value[16].isdigit():
        raise ValueProblem("INVALID_ID_NUMBER", "ID number must have 18 characters")
    return "SEX_MALE" if int(value[16]) % 2 else "SEX_FEMALE"
