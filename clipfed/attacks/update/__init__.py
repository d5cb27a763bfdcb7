"""Update parts (``attack-update``): how a malicious client rewrites its trained parameters."""
