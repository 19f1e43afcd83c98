"""Dagster assets, by domain."""
