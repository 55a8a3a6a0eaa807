"""import-linter contract types of our own (registered in pyproject.toml)."""
