"""The recipe flow, the Trainer and its config, checkpoints and run directories, data, the embedded base."""
