"""A local Bitrix24 stand-in: real HTTP servers on 127.0.0.1.

One ``StandIn`` runs an OAuth server that answers like ``oauth.bitrix.info`` (``/oauth/token/`` and
``/rest/app.info``); every ``Portal`` it creates runs its own server that answers like a portal's
REST API (``/rest/<method>``). Tests start it in-process; a human sandbox can reuse it.

Pure standard library (no Django, no third-party packages). All shared state sits behind one lock;
servers are daemon threads and never write to stderr. Nothing here logs a token.

One module per platform area, so the answer to a method and the doc page it follows are found from the
file names (``docs/standin.md`` has the whole table):

- ``oauth.py``: the OAuth server (token refresh, its own ``app.info``)
- ``rest.py``: the REST method table, scopes, ``time`` blocks; ``rest_app.py`` (user, profile,
  ``app.info``, ``server.time``, ``feature.get``), ``rest_placement.py``, ``rest_event.py`` (binding, online and
  offline), ``rest_offline.py`` (the offline queue, ``event.offline.*``, ONOFFLINEEVENT), ``rest_imopenlines.py``,
  ``rest_crm.py``, ``rest_batch.py``: the methods, by scope
- ``frames.py``: what a portal posts into an app frame; ``events.py``: app events and their delivery
  (the frame protocol itself is the sandbox page's: ``sandbox/pages.py``, ``sandbox/web/contact-center.js``)
- ``portal.py``: a portal's state; ``switches.py``: the switches tests turn; ``core.py``: ``StandIn``,
  its apps and its persistence
- ``limits.py``: request rate and operating time; ``handlers.py``: handler URL checks;
  ``faults.py``: slow and oversized answers
- ``http.py``: servers (HTTP or HTTPS) and request parsing; ``errors.py``: error codes; ``recorder.py``

For the human sandbox (``manage.py sandbox``) the stand-in can also listen on fixed ports, deliver the
app events bound with ``event.bind`` over HTTP (``Portal.deliver_event``), keep its portals and tokens
in a JSON file across restarts (``state_file``), and hand every path that is not an API to a ``web``
object (``sandbox.pages``) that serves the pages a person clicks through.

Facts follow the public REST documentation (repository ``bitrix24/b24restdocs``); each choice that
the documentation does not settle is marked "not documented" next to it.
"""

from __future__ import annotations

# The REST methods register themselves in rest.METHODS when their modules are imported (F401: for that alone).
from . import (  # noqa: F401
    rest_app,
    rest_batch,
    rest_crm,
    rest_event,
    rest_imconnector,
    rest_imopenlines,
    rest_offline,
    rest_placement,
)
from .core import StandIn
from .errors import OAUTH_ERROR_STATUS, REST_ERROR_STATUS
from .frames import FRAME_QUERY_FIELDS, frame_query_and_body
from .http import parse_php_params
from .portal import DEFAULT_OPEN_LINES, DEFAULT_SCOPE, DEFAULT_USERS, NOT_FULLY_INSTALLED, NotAdministrator, Portal
from .recorder import Recorder
from .rest import LIST_PAGE_SIZE, METHODS
from .rest_batch import BATCH_MAX_LENGTH

__all__ = [
    "StandIn",
    "Portal",
    "Recorder",
    "NotAdministrator",
    "NOT_FULLY_INSTALLED",
    "parse_php_params",
    "frame_query_and_body",
    "REST_ERROR_STATUS",
    "OAUTH_ERROR_STATUS",
    "DEFAULT_SCOPE",
    "DEFAULT_USERS",
    "DEFAULT_OPEN_LINES",
    "FRAME_QUERY_FIELDS",
    "BATCH_MAX_LENGTH",
    "LIST_PAGE_SIZE",
    "METHODS",
]
