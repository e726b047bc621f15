"""The revisions of the extension's schema, oldest first: ``r0001_*``, ``r0002_*``, ..."""
