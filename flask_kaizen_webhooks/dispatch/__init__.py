"""The delivery engines: the inline synchronous fan-out and the background dispatchers."""
