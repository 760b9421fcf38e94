"""The widget's Prometheus series: opens by result, and where the user check's verdict came from."""

from prometheus_client import Counter

from bitrix24.metrics import label

WIDGET_OPENS = Counter("b24widget_widget_opens", "Widget opens, by result: shown, or the refusal's reason.", ["result"])
VERIFICATIONS = Counter(
    "b24widget_verifications", "Widget opens' user checks: from the verdict cache, or asked of Bitrix24.", ["source"]
)


def widget_open(result: str) -> None:
    WIDGET_OPENS.labels(label(result)).inc()


def verification(*, cached: bool) -> None:
    VERIFICATIONS.labels("cache" if cached else "bitrix24").inc()
