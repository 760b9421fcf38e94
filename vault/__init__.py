"""Secrets at rest: the encrypted model field every app's secrets use, and the key rotation that covers them.

A small Django app at the bottom of the house (it imports no other app): portals' tokens, the inbox's
sealed event auth and openlines' channel secrets are all `vault.fields.EncryptedTextField`, so one
rotation finds every one of them through the model registry.
"""
