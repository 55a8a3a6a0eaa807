"""Devices, their jobs and deployments: the tables, data access, and starting a deployment."""
