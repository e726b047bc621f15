"""The integrator portal: web pages where integrators see and fix their webhooks themselves,
opened with a link the host makes for them."""

from .access import PortalLink
from .links import make_link

__all__ = ["PortalLink", "make_link"]
