"""The GrinningFace benchmark: emoji catalogue, splits, protocols, trial specs, scoring, reports, and the evaluation node."""
