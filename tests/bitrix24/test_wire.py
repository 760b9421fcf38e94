"""bitrix24/wire.py: the one spelling of what Bitrix24's identifiers, tokens and answers look like."""

import pytest

from bitrix24 import wire

# Characters str.isdigit() admits and int() or Bitrix24 do not (or that int() reads, but no portal sends).
NON_ASCII_DIGITS = ["²", "³", "¹", "①", "٣", "۷", "१", "１", "𝟙", "৩"]


@pytest.mark.parametrize(
    "value,ok",
    [
        ("0123456789abcdef0123456789abcdef", True),  # cloud: 32 hex characters
        ("local.test_app-1", True),
        ("m", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("m 1", False),
        ("m1;drop", False),
        ("<script>", False),
        ("m/1", False),
        ("mé", False),
        ("мемб", False),
        ("m²", False),
        ("m1\n", False),
        ("\nm1", False),
        ("m1\r\n", False),
        (None, False),
        (123, False),
        (b"m1", False),
        (["m1"], False),
    ],
)
def test_is_member_id(value, ok):
    assert wire.is_member_id(value) is ok


@pytest.mark.parametrize(
    "value,ok",
    [
        ("a" * 64, True),
        ("abc.DEF-123_x", True),
        ("t" * wire.MAX_TOKEN, True),
        ("t" * (wire.MAX_TOKEN + 1), False),
        ("", False),
        ("a b", False),
        ("a+b", False),
        ("a=", False),
        ("tök", False),
        ("abc\n", False),
        ("abc\x00", False),
        (None, False),
        (12345, False),
    ],
)
def test_is_token(value, ok):
    assert wire.is_token(value) is ok


@pytest.mark.parametrize(
    "value,ok",
    [
        ("0", True),
        ("42", True),
        ("1" * 20, True),
        ("1" * 21, False),
        ("", False),
        ("-1", False),
        ("+1", False),
        ("1.5", False),
        (" 1", False),
        ("1 ", False),
        ("1e3", False),
        ("12\n", False),
        (42, False),
        (None, False),
        (True, False),
    ]
    + [(digit, False) for digit in NON_ASCII_DIGITS]
    + [(f"1{digit}", False) for digit in NON_ASCII_DIGITS],
)
def test_is_digits_is_ascii_digits_only(value, ok):
    assert wire.is_digits(value) is ok


def test_is_digits_takes_its_length_limit():
    assert wire.is_digits("1234567890", max_length=10)
    assert not wire.is_digits("12345678901", max_length=10)


@pytest.mark.parametrize("digit", NON_ASCII_DIGITS)
def test_a_digit_str_isdigit_admits_is_refused(digit):
    """The reason wire.py exists: str.isdigit() says yes, and int() then fails or reads another number."""
    assert digit.isdigit()
    assert not wire.is_digits(digit) and wire.digits_or_empty(digit) == ""


@pytest.mark.parametrize(
    "value,expected",
    [
        ("17", "17"),
        (17, "17"),
        (0, "0"),
        ("007", "007"),
        (-1, ""),
        (True, ""),
        (False, ""),
        (1.0, ""),
        (None, ""),
        ("", ""),
        ("x", ""),
        ("²", ""),
        (10**20, ""),
        ("1" * 21, ""),
        ({"ID": 1}, ""),
    ],
)
def test_digits_or_empty(value, expected):
    assert wire.digits_or_empty(value) == expected


def test_digits_or_empty_takes_its_length_limit():
    assert wire.digits_or_empty(12345, max_length=4) == ""
    assert wire.digits_or_empty(1234, max_length=4) == "1234"


@pytest.mark.parametrize(
    "value,limit,expected",
    [
        (None, 255, ""),
        ("", 255, ""),
        ("short", 255, "short"),
        ("x" * 300, 255, "x" * 255),
        (12345, 3, "123"),
        ("ünï", 2, "ün"),
    ],
)
def test_clip(value, limit, expected):
    assert wire.clip(value, limit) == expected


@pytest.mark.parametrize(
    "answer,expected",
    [
        (
            {"error": "expired_token", "error_description": "The access token provided has expired."},
            ("expired_token", "The access token provided has expired."),
        ),
        ({"error": "QUERY_LIMIT_EXCEEDED"}, ("QUERY_LIMIT_EXCEEDED", "")),
        ({"error": "X", "error_description": None}, ("X", "")),
        ({"error": 404, "error_description": 7}, ("404", "7")),
        ({"error": "E" * 100, "error_description": "d" * 1000}, ("E" * wire.CODE_LIMIT, "d" * wire.DESCRIPTION_LIMIT)),
        ({"result": True}, None),
        ({"error": ""}, None),
        ({"error": None, "error_description": "x"}, None),
        ({"error": 0}, None),
        ([], None),
        ("error", None),
        (None, None),
        ([{"error": "X"}], None),
    ],
)
def test_error_of_reads_and_clips_an_error_answer(answer, expected):
    assert wire.error_of(answer) == expected


@pytest.mark.parametrize(
    "seconds,header",
    [
        (None, None),
        (0, "1"),
        (-5, "1"),
        (0.2, "1"),
        (1, "1"),
        (1.5, "2"),
        (2.0, "2"),
        (29.4, "30"),
        (30, "30"),
        (3600, "3600"),
    ],
)
def test_retry_after_header_is_whole_seconds_rounded_up_and_at_least_one(seconds, header):
    assert wire.retry_after_header(seconds) == header


def test_rebind_commands_unbind_before_each_bind():
    commands = wire.rebind_commands(["ONAPPINSTALL", "ONAPPUNINSTALL"], "https://app.example/events/")
    assert list(commands) == [
        "unbind_ONAPPINSTALL",
        "bind_ONAPPINSTALL",
        "unbind_ONAPPUNINSTALL",
        "bind_ONAPPUNINSTALL",
    ]
    assert commands["unbind_ONAPPINSTALL"] == (
        "event.unbind",
        {"event": "ONAPPINSTALL", "handler": "https://app.example/events/"},
    )
    assert commands["bind_ONAPPUNINSTALL"] == (
        "event.bind",
        {"event": "ONAPPUNINSTALL", "handler": "https://app.example/events/"},
    )
    assert wire.rebind_commands(("ONCRMDEALADD",), "h") == {
        "unbind_ONCRMDEALADD": ("event.unbind", {"event": "ONCRMDEALADD", "handler": "h"}),
        "bind_ONCRMDEALADD": ("event.bind", {"event": "ONCRMDEALADD", "handler": "h"}),
    }
    assert wire.rebind_commands([], "h") == {}


@pytest.mark.parametrize(
    "code,description,bound",
    [
        ("ERROR_PLACEMENT_HANDLER_ALREADY_BINDED", "", True),
        ("ERROR_CORE", "Unable to set placement handler: Handler already binded", True),
        ("ERROR_CORE", "HANDLER ALREADY BINDED", True),
        ("ERROR_CORE", "Unable to set placement handler", False),
        ("ERROR_CORE", "", False),
        ("ERROR_ARGUMENT", "Handler already binded", False),
        ("ACCESS_DENIED", "", False),
    ],
)
def test_already_bound(code, description, bound):
    assert wire.already_bound(code, description) is bound
