"""Tests of the local Bitrix24 stand-in (sandbox/standin/)."""
