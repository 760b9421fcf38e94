"""The ``batch`` method: up to 50 commands in one request (settings/how-to-call-rest-api/batch.md)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote

from .errors import ApiError
from .http import parse_php_params, truthy
from .rest import Page, method, php_section, run_method

BATCH_MAX_LENGTH = 50  # settings/how-to-call-rest-api/batch.md
# $result[get_user][UF_DEPARTMENT][0], raw or percent-encoded as clients send it in a query string.
_RESULT_REFERENCE = re.compile(r"(?:\$|%24)result((?:(?:\[|%5B)[^\[\]%&=]*(?:\]|%5D))+)", re.IGNORECASE)
_REFERENCE_PART = re.compile(r"(?:\[|%5B)([^\[\]%&=]*)(?:\]|%5D)", re.IGNORECASE)


def _reference(results, match):
    """The referenced value, query-encoded; an unknown reference is left as it was (not documented)."""
    value = results
    for part in _REFERENCE_PART.findall(match.group(1)):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return match.group(0)
    if isinstance(value, (dict, list)):
        return match.group(0)
    if isinstance(value, bool):
        value = "1" if value else ""
    return quote(str(value), safe="")


@method("batch", doc="settings/how-to-call-rest-api/batch.md")
def batch(portal, params, grant):
    commands = params.get("cmd") or {}
    if isinstance(commands, list):
        commands = {str(i): c for i, c in enumerate(commands)}
    if not isinstance(commands, dict):
        raise ApiError("ERROR_ARGUMENT", "Argument 'cmd' must be an array", argument="cmd")
    halt = truthy(params.get("halt", False))
    sections = {name: {} for name in ("result", "result_error", "result_total", "result_next", "result_time")}
    for position, (key, line) in enumerate(commands.items()):
        if position >= BATCH_MAX_LENGTH:
            # batch.md: subqueries beyond the limit end with this error; the batch itself is 200.
            sections["result_error"][key] = ApiError("ERROR_BATCH_LENGTH_EXCEEDED").payload()
            continue
        line = line if isinstance(line, str) else ""
        name, _, query = line.partition("?")
        name = name.strip().strip("/").lower()
        if name.endswith(".json"):
            name = name[: -len(".json")]
        # batch.md: "$result[key][field]..." in a command's query is the value of an earlier answer.
        query = _RESULT_REFERENCE.sub(lambda match: _reference(sections["result"], match), query)
        sub_params = parse_php_params(parse_qsl(query, keep_blank_values=True))
        sub_params.pop("auth", None)  # sub-commands run with the batch's authorization
        with portal._standin.lock:
            portal._calls[name] += 1
        try:
            if name == "batch":
                raise ApiError("ERROR_BATCH_METHOD_NOT_ALLOWED")
            portal._scripted_failure(name)
            answer, block = run_method(portal, name, sub_params, grant)
        except ApiError as error:
            sections["result_error"][key] = {"error": error.code, "error_description": error.description}
            if halt:
                break
            continue
        if isinstance(answer, Page):
            sections["result"][key] = answer.result
            if answer.total is not None:
                sections["result_total"][key] = answer.total
            if answer.next is not None:
                sections["result_next"][key] = answer.next
        else:
            sections["result"][key] = answer
        sections["result_time"][key] = block
    return {name: php_section(value) for name, value in sections.items()}
