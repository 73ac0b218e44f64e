"""Realms: who the users are. The passwd-file backend and the twisted.cred wiring."""
