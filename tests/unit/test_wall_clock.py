"""The cached local-to-UTC conversion equals the exact one, transitions included."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters.mapping.convert import (
    DatePattern,
    ValueProblem,
    WallClock,
    _offset_text,
    _renderer,
    format_timestamp,
    make_date_parser,
    make_datetime_formatter,
    make_datetime_parser,
    zone,
)

ZONES = [
    "Asia/Shanghai",  # summer time 1986-1991
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # 30-minute shifts
    "Asia/Kathmandu",  # +05:45
    "Pacific/Apia",  # skipped 2011-12-30 entirely
    "America/Sao_Paulo",
]


def exact(tz_name: str, dt: datetime) -> str:
    # fold=0, as WallClock promises: hypothesis also draws fold=1, which picks the other side
    # of an ambiguous or skipped hour.
    return format_timestamp(dt.replace(tzinfo=zone(tz_name), fold=0))


def fast(clock: WallClock, dt: datetime) -> str:
    return clock(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond)


@settings(max_examples=400, deadline=None)
@given(
    tz_name=st.sampled_from(ZONES),
    dt=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)),
)
@example(tz_name="Europe/London", dt=datetime(1987, 3, 29, 1, 0, fold=1))  # in a skipped hour
def test_random_wall_times(tz_name: str, dt: datetime) -> None:
    clock = WallClock(zone(tz_name))
    assert fast(clock, dt) == exact(tz_name, dt)
    assert fast(clock, dt) == exact(tz_name, dt)  # now from the hour's remembered offset


@pytest.mark.parametrize("tz_name", ZONES)
def test_every_minute_of_every_transition_day(tz_name: str) -> None:
    tz = zone(tz_name)
    clock = WallClock(tz)
    days = []
    for year in (1986, 1990, 2011, 2026):
        d = date(year, 1, 1)
        while d.year == year:
            a = datetime(d.year, d.month, d.day, tzinfo=tz).utcoffset()
            b = datetime(d.year, d.month, d.day, 23, 59, 59, tzinfo=tz).utcoffset()
            if a != b:
                days.append(d)
            d += timedelta(days=1)
    for d in days:
        for minute in range(24 * 60):
            for second, us in ((0, 0), (59, 999_000)):
                dt = datetime(d.year, d.month, d.day, minute // 60, minute % 60, second, us)
                assert fast(clock, dt) == exact(tz_name, dt), (tz_name, dt)
    if tz_name != "Asia/Kathmandu":
        assert days, "the sweep found no transition day to check"


def test_times_at_the_ends_of_the_calendar_are_refused_not_crashed() -> None:
    tz = zone("Asia/Shanghai")
    parse = make_datetime_parser(DatePattern("yyyyMMddHHmmss"), tz)
    with pytest.raises(ValueProblem) as err:
        parse("00010101000000")  # before 0001-01-01T00:00Z once moved to UTC
    assert err.value.code == "BAD_DATETIME"
    assert parse("99991231235959") == "9999-12-31T15:59:59Z"
    fmt = make_datetime_formatter(DatePattern("yyyyMMddHHmmss"), tz)
    with pytest.raises(ValueProblem) as err:
        fmt("9999-12-31T23:00:00Z")  # past 9999-12-31 in Shanghai
    assert err.value.code == "BAD_TIMESTAMP"
    iso = make_datetime_parser(DatePattern("iso8601"), tz)
    with pytest.raises(ValueProblem) as err:
        iso("0001-01-01T00:00:00+08:00")
    assert err.value.code == "BAD_DATETIME"


def _text(layout: str, dt: datetime, tz: str = "") -> str:
    """``dt`` in ``layout``, written with ``str.format`` (the layout's own reference)."""
    pattern = DatePattern(layout)
    return pattern.format.format(
        y=dt.year, mo=dt.month, d=dt.day, h=dt.hour, mi=dt.minute, s=dt.second,
        ms=dt.microsecond // 1000, tz=tz if "tz" in pattern.fields else "",
    )  # fmt: skip


LAYOUTS = [
    "iso8601",
    "yyyyMMddHHmmss",
    "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
    "yyyy'年'MM'月'dd'日' HH时mm分",
    "'{y}' dd/MM/yyyy 'at' HH'\\'mm\"ss",  # braces, a backslash and a quote as literal text
    "'{y:04d}{{tz}}}' yyyyMMdd",  # literal text that looks like the layout's own fields
]


@settings(max_examples=300, deadline=None)
@given(
    tz_name=st.sampled_from(ZONES),
    layout=st.sampled_from(LAYOUTS),
    dt=st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2100, 12, 30)),
)
def test_the_generated_layout_writes_what_str_format_writes(
    tz_name: str, layout: str, dt: datetime
) -> None:
    pattern, tz = DatePattern(layout), zone(tz_name)
    value = format_timestamp(dt.replace(tzinfo=UTC))
    local = dt.replace(tzinfo=UTC).astimezone(tz)
    off = local.utcoffset()
    assert off is not None
    secs = int(off.total_seconds())
    tzs = (
        "Z"
        if secs == 0
        else f"{'+' if secs > 0 else '-'}{abs(secs) // 3600:02d}:{abs(secs) % 3600 // 60:02d}"
    )
    want = _text(layout, local, tzs)
    fmt = make_datetime_formatter(pattern, tz)
    assert fmt(value) == want
    assert fmt(value) == want  # the offset's text now remembered


PARSED_LAYOUTS = [
    "yyyyMMddHHmmss",
    "yyyy-MM-dd'T'HH:mm:ss.SSS",
    "yyyy'年'MM'月'dd'日' HH时mm分",  # no seconds
    "dd/MM/yyyy HH:mm:ss",  # the hour's digits are not adjacent
]


def _expected(layout: str, dt: datetime) -> datetime:
    fields = DatePattern(layout).fields
    return dt.replace(
        second=dt.second if "s" in fields else 0,
        microsecond=dt.microsecond // 1000 * 1000 if "ms" in fields else 0,
    )


@settings(max_examples=400, deadline=None)
@given(
    tz_name=st.sampled_from(ZONES),
    layout=st.sampled_from(PARSED_LAYOUTS),
    dt=st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2100, 12, 30)),
)
def test_parsing_by_the_local_hour_equals_the_exact_conversion(
    tz_name: str, layout: str, dt: datetime
) -> None:
    parse = make_datetime_parser(DatePattern(layout), zone(tz_name))
    text, want = _text(layout, dt), exact(tz_name, _expected(layout, dt))
    assert parse(text) == want
    assert parse(text) == want  # now by the hour's UTC text, where its offset allows


@pytest.mark.parametrize("tz_name", ZONES)
def test_parsing_every_minute_of_transition_days(tz_name: str) -> None:
    tz = zone(tz_name)
    parse = make_datetime_parser(DatePattern("yyyyMMddHHmmss"), tz)
    for d in (date(1986, 5, 4), date(1991, 9, 15), date(2026, 3, 8), date(2026, 3, 29),
              date(2026, 10, 25), date(2026, 11, 1), date(2011, 12, 29), date(2011, 12, 31)):  # fmt: skip
        for minute in range(24 * 60):
            dt = datetime(d.year, d.month, d.day, minute // 60, minute % 60, 59)
            text = f"{dt:%Y%m%d%H%M%S}"
            assert parse(text) == exact(tz_name, dt), (tz_name, dt)
            assert parse(text) == exact(tz_name, dt), (tz_name, dt)


@pytest.mark.parametrize("text", ["20261120096000", "20261120093060", "20261120099999"])
def test_a_minute_or_second_past_59_is_refused_once_the_hour_is_known(text: str) -> None:
    parse = make_datetime_parser(DatePattern("yyyyMMddHHmmss"), zone("Asia/Shanghai"))
    assert parse("20261120093000") == "2026-11-20T01:30:00Z"
    assert parse("20261120093000") == "2026-11-20T01:30:00Z"
    with pytest.raises(ValueProblem) as err:
        parse(text)
    assert err.value.code == "BAD_DATETIME"


def test_layouts_with_chinese_literal_text_parse() -> None:
    # Until 2026-11-26 every layout was checked with t.isascii(), which 年/月/日 fail.
    layout = DatePattern("yyyy'年'MM'月'dd'日'")
    assert make_date_parser(layout)("2026年11月20日") == "2026-11-20"
    with pytest.raises(ValueProblem):
        make_date_parser(layout)("2026年1١月20日")  # an Arabic-Indic digit
    parse = make_datetime_parser(
        DatePattern("yyyy'年'MM'月'dd'日' HH时mm分"), zone("Asia/Shanghai")
    )
    assert parse("2026年11月20日 09时30分") == "2026-11-20T01:30:00Z"


@pytest.mark.parametrize("tz_name", ZONES)
@pytest.mark.parametrize("layout", ["iso8601", "yyyyMMddHHmmss", "'{y}' dd/MM/yyyy HH:mm"])
def test_formatting_every_minute_around_transitions(tz_name: str, layout: str) -> None:
    """The formatter's per-UTC-hour texts against the exact rendering, twice per value."""
    tz, pattern = zone(tz_name), DatePattern(layout)
    fmt = make_datetime_formatter(pattern, tz)
    render = _renderer(pattern)
    for day in (datetime(1986, 5, 3, tzinfo=UTC), datetime(2026, 3, 7, tzinfo=UTC),
                datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 10, 24, tzinfo=UTC),
                datetime(2026, 10, 31, tzinfo=UTC), datetime(2011, 12, 29, tzinfo=UTC)):  # fmt: skip
        for minute in range(0, 3 * 24 * 60, 7):
            u = day + timedelta(minutes=minute, seconds=minute % 60)
            value = format_timestamp(u)
            local = u.astimezone(tz)
            want = render(local, _offset_text(local) if "tz" in pattern.fields else "")
            assert fmt(value) == want, (tz_name, value)
            assert fmt(value) == want, (tz_name, value)


@pytest.mark.parametrize(
    "value",
    ["2026-11-20T01:60:00Z", "2026-11-20T01:30:60Z", "2026-11-20T01:3a:00Z", "2026-11-20T01:30:0١Z",
     "2026-11-20T01-30-00Z"],
)  # fmt: skip
def test_a_malformed_timestamp_is_refused_once_its_hour_is_known(value: str) -> None:
    fmt = make_datetime_formatter(DatePattern("yyyyMMddHHmmss"), zone("Asia/Shanghai"))
    assert fmt("2026-11-20T01:30:00Z") == "20261120093000"
    assert fmt("2026-11-20T01:30:00Z") == "20261120093000"
    with pytest.raises(ValueProblem) as err:
        fmt(value)
    assert err.value.code == "BAD_TIMESTAMP"
