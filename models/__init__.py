"""fleetcast's domain: record schema, fleet simulator, features, TFT wrapper, baselines, evaluation, alerts.

Plain functions and classes; Dagster (orchestration/) and BentoML (serving/) call into them.
"""
