"""Background work: deliver inbound messages to Bitrix24, operator replies to the outside system."""
from celery import shared_task


def enqueue_channel(model, channel_id: int) -> None:
    """Queue delivery of a channel's pending messages of `model` (InboundMessage or OutboundMessage)."""
