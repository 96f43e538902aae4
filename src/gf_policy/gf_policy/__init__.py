"""The policy node and its backends (oracle, chance, replay, pi0-style VLA, remote inference)."""
