"""Sphinx configuration for the flask-kaizen-webhooks documentation."""

import flask_kaizen_webhooks

project = "flask-kaizen-webhooks"
author = "flask-kaizen-webhooks contributors"
release = flask_kaizen_webhooks.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"flask-kaizen-webhooks {release}"
