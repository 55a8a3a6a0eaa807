"""The model and dataset registry: tables (``models``) and data access (``store``)."""
