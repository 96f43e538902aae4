"""Training of pi0-style VLAs on GrinningFace demonstrations (datasets, schemes, loops, sweeps)."""
