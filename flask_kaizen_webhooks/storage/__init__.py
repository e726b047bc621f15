"""Storage: the tables, the database they live in, and every query, one module per concern."""
