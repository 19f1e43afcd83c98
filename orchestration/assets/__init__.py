"""Dagster assets, one module per domain (``definitions.py`` loads every asset of this package).

- data.py: ``fleet_dataset`` + ``incident_labels`` (group ``data``)
- training.py: ``experiment_split``, ``tft_model`` (group ``training``)
- evaluation.py: ``model_evaluation`` (group ``training``)
- alerting.py: ``alert_backtest`` (group ``training``): the alert backtest after evaluation
- promotion.py: ``registered_model``, ``champion_model`` (group ``training``; gated on the alert backtest too)
- packaging.py: ``bento_model`` (group ``serving``)
- feed.py: ``production_dataset`` (group ``feed``): the feed store read back for production training
"""
