"""Delivery agents: what happens to an accepted message."""
