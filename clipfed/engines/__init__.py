"""Ways to run an experiment on one machine: ``flwr run`` (``launch``), the in-process engine
(``inprocess``), and the checks both make before any training (``preflight``)."""
