"""The connector actions' form (SETTING_CONNECTOR and the Contact Center overview post it): validated here,
before anything is looked up, written or asked of Bitrix24."""

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

from bitrix24 import wire

from . import outbound, registry

ACTIONS = ("list", "connect", "disconnect", "rotate", "save")


def _no_lone_surrogates(value: str) -> None:
    # A lone surrogate cannot be encoded (PostgreSQL, JSON to Bitrix24): refused as malformed, not a 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("not valid text", code="bad_text") from None


def _token(value: str) -> None:
    if not wire.is_token(value):
        raise ValidationError("not a token", code="bad_token")


class ConnectorActionForm(forms.Form):
    """What the page posts. Django's CharField already refuses NUL characters; lone surrogates too, here."""

    action = forms.ChoiceField(choices=[(a, a) for a in ACTIONS])
    connector = forms.CharField(required=False, max_length=64, validators=[_no_lone_surrogates])
    line = forms.RegexField(regex=r"^[0-9]{1,10}\Z", required=False)
    name = forms.CharField(required=False, max_length=128, validators=[_no_lone_surrogates])
    webhook_url = forms.CharField(required=False, max_length=500, validators=[_no_lone_surrogates])
    # The user's current token, for a change (Bitrix24 is asked about it): a malformed one is never sent there.
    AUTH_ID = forms.CharField(required=False, max_length=wire.MAX_TOKEN, validators=[_token])

    def clean(self):
        data = super().clean()
        action = data.get("action")
        # The overview's first list names no connector: the answer tells the page which one it shows.
        connector_id = data.get("connector") or (registry.HTTP.id if action == "list" else "")
        data["connector"] = registry.get(connector_id) if connector_id else None
        if data["connector"] is None or (action != "list" and not data.get("line")):
            raise ValidationError(_("The request is malformed."), code="bad_request")
        url = data.get("webhook_url") or ""
        if url:
            try:
                data["webhook_url"] = outbound.check_webhook_url(url)
            except outbound.BadWebhookUrl as exc:
                self.add_error(
                    "webhook_url",
                    ValidationError(
                        _("The webhook address is not allowed: %(why)s") % {"why": exc}, code="bad_webhook_url"
                    ),
                )
        return data

    def refusal(self) -> tuple[str, str]:
        """(code, message) for an invalid form: a bad webhook address is named; anything else is malformed."""
        for error in self.errors.as_data().get("webhook_url", []):
            if error.code == "bad_webhook_url":
                return "bad_webhook_url", error.messages[0]
        return "bad_request", _("The request is malformed.")
