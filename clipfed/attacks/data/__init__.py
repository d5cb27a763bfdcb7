"""Data parts (``attack-data``): triggers and the poisoning of a malicious client's shard."""
