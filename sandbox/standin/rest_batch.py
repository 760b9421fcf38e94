"""The ``batch`` method: up to 50 commands in one request (settings/how-to-call-rest-api/batch.md)."""
from __future__ import annotations

import time
from urllib.parse import parse_qsl

from .errors import ApiError
from .http import parse_php_params, truthy
from .rest import Page, dispatch, method, php_section, time_block

BATCH_MAX_LENGTH = 50  # settings/how-to-call-rest-api/batch.md


@method("batch", doc="settings/how-to-call-rest-api/batch.md")
def batch(portal, params, grant):
    commands = params.get("cmd") or {}
    if isinstance(commands, list):
        commands = {str(i): c for i, c in enumerate(commands)}
    if not isinstance(commands, dict):
        raise ApiError("ERROR_ARGUMENT", "Argument 'cmd' must be an array", argument="cmd")
    halt = truthy(params.get("halt", False))
    sections = {name: {} for name in ("result", "result_error", "result_total",
                                      "result_next", "result_time")}
    for position, (key, line) in enumerate(commands.items()):
        if position >= BATCH_MAX_LENGTH:
            # batch.md: subqueries beyond the limit end with this error; the batch itself is 200.
            sections["result_error"][key] = ApiError("ERROR_BATCH_LENGTH_EXCEEDED").payload()
            continue
        start = time.time()
        line = line if isinstance(line, str) else ""
        name, _, query = line.partition("?")
        name = name.strip().strip("/").lower()
        if name.endswith(".json"):
            name = name[:-len(".json")]
        sub_params = parse_php_params(parse_qsl(query, keep_blank_values=True))
        sub_params.pop("auth", None)  # sub-commands run with the batch's authorization
        with portal._standin.lock:
            portal._calls[name] += 1
        try:
            if name == "batch":
                raise ApiError("ERROR_BATCH_METHOD_NOT_ALLOWED")
            portal._scripted_failure(name)
            answer = dispatch(portal, name, sub_params, grant)
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
        sections["result_time"][key] = time_block(start)
    return {name: php_section(value) for name, value in sections.items()}
