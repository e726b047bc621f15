"""Delivery: the HTTP client, signed requests, the synchronous fan-out and the engines."""
