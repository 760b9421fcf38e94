"""Handlers of the connector events (OnImConnector*), registered with the inbox (portals/inbox.py)."""

HANDLERS: dict = {}
