"""The integrators' JSON API: the blueprint, input checks and the OpenAPI description."""
