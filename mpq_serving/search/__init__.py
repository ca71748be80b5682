"""Offline plan search: strategies that write plans, and what they share."""
