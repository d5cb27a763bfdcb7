"""Run records: the result folder (config, versions, per-round metrics) and checkpoints."""
