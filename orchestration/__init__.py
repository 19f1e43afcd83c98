"""Dagster definitions for fleetcast: thin glue over models/."""
