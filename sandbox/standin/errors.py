"""Error answers: the codes, their HTTP statuses and descriptions, and the exception that carries one.

REST errors follow ``_includes/system-errors.md`` (included by ``error-codes.md``) and the method pages
named beside each code; OAuth-server errors follow ``settings/oauth/error-codes.md``.
"""

from __future__ import annotations

__all__ = [
    "REST_ERROR_STATUS",
    "REST_ERROR_DESCRIPTION",
    "OAUTH_ERROR_STATUS",
    "OAUTH_ERROR_DESCRIPTION",
    "ApiError",
    "oauth_error",
    "BLOCK_ON_REST",
]

# HTTP status of each REST error code the stand-in can answer.
REST_ERROR_STATUS = {
    # _includes/system-errors.md (included by error-codes.md)
    "NO_AUTH_FOUND": 401,
    "expired_token": 401,
    "insufficient_scope": 403,
    "ACCESS_DENIED": 403,
    "QUERY_LIMIT_EXCEEDED": 503,
    "ERROR_BATCH_LENGTH_EXCEEDED": 400,
    "ERROR_BATCH_METHOD_NOT_ALLOWED": 405,
    "PORTAL_DELETED": 500,
    "INTERNAL_SERVER_ERROR": 500,
    # settings/performance/limits.md ("Resource Intensity Limits")
    "OPERATION_TIME_LIMIT": 429,
    # settings/cloud-and-on-premise/on-premise/custom-methods.md: CRestServer::STATUS_PAYMENT_REQUIRED
    "PAYMENT_REQUIRED": 402,
    # api-reference/widgets/placement-unbind.md, api-reference/events/event-bind.md
    "ERROR_ARGUMENT": 400,
    "ERROR_EVENT_NOT_FOUND": 400,
    # api-reference/widgets/user-field/userfieldtype-add.md ("Handler already binded" is ERROR_CORE, 400)
    "ERROR_CORE": 400,
    # api-reference/widgets/index.md ("Common Mistakes"); not documented: the status (the widget page's
    # error table answers 400 for argument errors)
    "ERROR_WRONG_HANDLER_URL": 400,
    "ERROR_UNSUPPORTED_PROTOCOL": 400,
    # api-reference/crm/universal/crm-item-list.md
    "NOT_FOUND": 400,
    # not documented: what portals and public clients commonly show
    "invalid_token": 401,
    "ERROR_METHOD_NOT_FOUND": 404,
    "ERROR_PLACEMENT_NOT_FOUND": 400,
    "INVALID_REQUEST": 400,
}

REST_ERROR_DESCRIPTION = {
    "NO_AUTH_FOUND": "Wrong authorization data",
    "invalid_token": "Unable to get application by token",
    "expired_token": "The access token provided has expired",
    "insufficient_scope": "The request requires higher privileges than provided by the access token",
    "ACCESS_DENIED": "Access denied!",
    "QUERY_LIMIT_EXCEEDED": "Too many requests",
    "OPERATION_TIME_LIMIT": "Method is blocked due to operation time limit.",
    "ERROR_METHOD_NOT_FOUND": "Method not found!",
    "ERROR_BATCH_LENGTH_EXCEEDED": "Max batch length exceeded",
    "ERROR_BATCH_METHOD_NOT_ALLOWED": "Method is not allowed for batch usage",
    "PAYMENT_REQUIRED": "Payment required",
    "PORTAL_DELETED": "Portal was deleted",
    "INTERNAL_SERVER_ERROR": "Internal server error",
}

# HTTP status of each OAuth-server error. The Bitrix24 pages (settings/oauth/error-codes.md) list the
# codes but not the statuses: invalid_client is 401 and the rest 400, as in RFC 6749 section 5.2 and
# as the official PHP SDK (b24phpsdk, ApiLevelErrorHandler::handleOAuthError) expects them.
OAUTH_ERROR_STATUS = {
    "invalid_request": 400,
    "invalid_client": 401,
    "invalid_grant": 400,
    "invalid_scope": 400,
    "PAYMENT_REQUIRED": 400,
    "NOT_INSTALLED": 400,
    "PORTAL_DELETED": 400,
}

OAUTH_ERROR_DESCRIPTION = {
    "invalid_request": "Invalid request",
    "invalid_client": "Invalid client credentials",
    "invalid_grant": "Invalid grant",
    "PAYMENT_REQUIRED": "Payment required",
    "NOT_INSTALLED": "Application not installed",
    "PORTAL_DELETED": "Portal was deleted",
}

# How a ``Portal.block(error)`` shows on the portal's REST (None: REST is not affected).
BLOCK_ON_REST = {
    "PAYMENT_REQUIRED": "PAYMENT_REQUIRED",
    "PORTAL_DELETED": "PORTAL_DELETED",
    # A portal that lost the app no longer knows its tokens.
    "NOT_INSTALLED": "invalid_token",
    # A refused refresh token says nothing about the access tokens already issued.
    "invalid_grant": None,
}


class ApiError(Exception):
    """An error answer: ``{"error": code, "error_description": ...}`` with an HTTP status."""

    def __init__(self, code, description=None, status=None, table=None, **extra):
        super().__init__(code)
        self.code = code
        statuses = REST_ERROR_STATUS if table is None else table
        descriptions = REST_ERROR_DESCRIPTION if table is None else OAUTH_ERROR_DESCRIPTION
        self.description = description if description is not None else descriptions.get(code, code)
        self.status = status if status is not None else statuses.get(code, 400)
        self.extra = extra

    def payload(self):
        return {"error": self.code, "error_description": self.description, **self.extra}


def oauth_error(code, description=None):
    """An OAuth-server error (``settings/oauth/error-codes.md``)."""
    return ApiError(code, description, table=OAUTH_ERROR_STATUS)
