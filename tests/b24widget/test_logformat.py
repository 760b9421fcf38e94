"""Plain logs keep the structured fields on the line (JSON logs carry them as keys)."""

import json
import logging

from pythonjsonlogger.json import JsonFormatter

from b24widget.logformat import PlainFormatter


def record(message, **extra):
    logger = logging.getLogger("portals.lifecycle")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None, extra=extra)


def test_plain_lines_carry_every_extra_field_as_key_value():
    line = PlainFormatter("%(levelname)s %(name)s %(message)s").format(
        record(
            "rest error",
            member_id="abc123",
            method="crm.item.list",
            code="QUERY_LIMIT_EXCEEDED",
            http_status=503,
            request_id="r-1",
            detail="two words",
        )
    )
    assert line == (
        "INFO portals.lifecycle rest error member_id=abc123 method=crm.item.list "
        'code=QUERY_LIMIT_EXCEEDED http_status=503 request_id=r-1 detail="two words"'
    )


def test_a_line_without_fields_is_unchanged_and_a_traceback_stays_below():
    formatter = PlainFormatter("%(levelname)s %(message)s")
    assert formatter.format(record("portal event")) == "INFO portal event"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = record("failed", member_id="m1")
        failed.exc_info = sys.exc_info()
    first, *rest = formatter.format(failed).split("\n")
    assert first == "INFO failed member_id=m1" and rest[-1] == "ValueError: boom"


def test_the_configured_formats_carry_the_same_fields(settings):
    plain = settings.LOGGING["formatters"]["plain"]
    assert plain["()"] == "b24widget.logformat.PlainFormatter"
    line = JsonFormatter("%(levelname)s %(message)s").format(record("portal event", member_id="m1", event="installed"))
    assert json.loads(line)["member_id"] == "m1"
