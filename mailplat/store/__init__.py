"""Mailbox stores: where mail lives and how the protocols see it."""
