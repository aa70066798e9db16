"""``tongban mapping ...`` and ``tongban translate``: the integrator's offline tools.

Exit codes (stable, for scripts): 0 success; 1 the data failed (mapping problems, golden
failures, an invalid record); 2 usage errors (bad arguments, unknown schema, unreadable input).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from adapters.mapping import (
    MalformedRecordError,
    MappingError,
    MappingLoadError,
    MappingSet,
    RecordInvalidError,
    UnknownSchemaError,
)
from adapters.mapping.golden import run_golden

__all__ = ["add_mapping_commands"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _load(path: Path, err: TextIO) -> MappingSet | None:
    try:
        return MappingSet.load(path)
    except MappingLoadError as exc:
        for p in exc.problems:
            print(f"error: {p}", file=err)
        print(f"{len(exc.problems)} problem(s); the mapping set was not loaded", file=err)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    """Load, check and compile every mapping; print every problem with file:line."""
    ms = _load(Path(args.dir), sys.stderr)
    if ms is None:
        return EXIT_FAILED
    for w in ms.warnings:
        print(f"warning: {w}", file=sys.stderr)
    cities = ", ".join(f"{c.name} ({c.code})" for c in ms.cities.values())
    print(f"ok: {len(ms.compiled)} mappings in {len(ms.cities)} cities: {cities}")
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    """Run the golden samples and round trips of every mapping."""
    ms = _load(Path(args.dir), sys.stderr)
    if ms is None:
        return EXIT_FAILED
    results = run_golden(ms, args.city)
    failed = [r for r in results if not r.ok]
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'} {r.sample}")
        if args.verbose:
            for w in r.warnings:
                print(f"     {w}")
        if not r.ok:
            for line in r.detail.splitlines():
                print(f"     {line}")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if not results:
        print("no samples found", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if failed else EXIT_OK


def cmd_coverage(args: argparse.Namespace) -> int:
    """Print unread source fields and unfilled canonical fields of a city's mappings (or of
    one mapping, given its schema name)."""
    ms = _load(Path(args.dir), sys.stderr)
    if ms is None:
        return EXIT_FAILED
    if args.city in ms.compiled:
        schemas = [args.city]
    else:
        city = ms.city(args.city)
        if city is None:
            print(
                f"error: unknown city or schema {args.city!r} (cities: {', '.join(ms.cities)}; "
                f"schemas: {', '.join(sorted(ms.compiled))})",
                file=sys.stderr,
            )
            return EXIT_USAGE
        schemas = sorted(s for s in ms.compiled if s.startswith(city.name + "."))
    report = {}
    for schema in schemas:
        cov = ms.coverage(schema)
        report[schema] = {
            "source_fields_never_read": cov.source_unread,
            "canonical_fields_never_filled": cov.canonical_unfilled,
            "source_fields_never_written": cov.source_unwritten,
        }
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return EXIT_OK
    for schema, parts in report.items():
        print(f"{schema}")
        for title, items in parts.items():
            print(f"  {title.replace('_', ' ')}: {len(items)}")
            for item in items:
                print(f"    - {item}")
    return EXIT_OK


def cmd_translate(args: argparse.Namespace) -> int:
    """Translate a JSON record offline from one schema to another."""
    ms = _load(Path(args.mappings), sys.stderr)
    if ms is None:
        return EXIT_FAILED
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = ms.translate_json(args.source, args.target, data)
    except UnknownSchemaError as exc:
        print(f"error: {exc} (known: {', '.join(ms.schema_names())})", file=sys.stderr)
        return EXIT_USAGE
    except RecordInvalidError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_FAILED
    except MalformedRecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except MappingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for w in result.warnings:
        print(w, file=sys.stderr)
    print(json.dumps(result.record, ensure_ascii=False, indent=None if args.compact else 2))
    return EXIT_OK


def add_mapping_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``mapping`` and ``translate`` on the top-level parser."""
    mp = sub.add_parser(
        "mapping",
        help="check, test and inspect city mappings",
        description="Integrator tools for the mappings in mappings/<city>/.",
    )
    msub = mp.add_subparsers(dest="mapping_command", required=True, metavar="COMMAND")
    check = msub.add_parser("check", help="load and validate every mapping; print every problem")
    check.add_argument(
        "dir", nargs="?", default="mappings", help="mapping folder (default: mappings)"
    )
    check.set_defaults(func=cmd_check)
    test = msub.add_parser(
        "test", help="run golden samples and round trips; show a diff on failure"
    )
    test.add_argument(
        "dir", nargs="?", default="mappings", help="mapping folder (default: mappings)"
    )
    test.add_argument("--city", help="only this city")
    test.add_argument("-v", "--verbose", action="store_true", help="also print warnings")
    test.set_defaults(func=cmd_test)
    cov = msub.add_parser("coverage", help="unread source fields and unfilled canonical fields")
    cov.add_argument(
        "city",
        help="city name or region code (every mapping of the city), e.g. zhongshan or 442000, "
        "or one schema, e.g. zhongshan.case",
    )
    cov.add_argument("--dir", default="mappings", help="mapping folder (default: mappings)")
    cov.add_argument("--json", action="store_true", help="print JSON")
    cov.set_defaults(func=cmd_coverage)
    tr = sub.add_parser(
        "translate",
        help="translate a JSON record between schemas, offline",
        description="Translate one JSON record (FILE, or - for stdin) from one "
        "registered schema to another; the result is printed on stdout.",
    )
    tr.add_argument(
        "--from", dest="source", required=True, help="source schema, e.g. zhongshan.case"
    )
    tr.add_argument("--to", dest="target", required=True, help="target schema, e.g. shenzhen.case")
    tr.add_argument("file", help="JSON file, or - for standard input")
    tr.add_argument("--mappings", default="mappings", help="mapping folder (default: mappings)")
    tr.add_argument("--compact", action="store_true", help="print the JSON on one line")
    tr.set_defaults(func=cmd_translate)
