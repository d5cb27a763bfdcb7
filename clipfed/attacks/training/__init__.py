"""Training parts (``attack-training``): how a malicious client trains on its poisoned shard."""
