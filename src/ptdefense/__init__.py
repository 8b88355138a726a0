"""ptdefense: PT (Partial Train and Isolate) backdoor defense as a DVC + MLflow pipeline."""
