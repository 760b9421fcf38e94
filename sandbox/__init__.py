"""Local Bitrix24 stand-in (OAuth server and portal REST over real HTTP on 127.0.0.1)."""
