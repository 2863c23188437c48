"""Training data: the dialogue corpus and its synthesis into two-channel chunk-format tokens."""
