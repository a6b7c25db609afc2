"""A run: profiles (every setting), the data a profile picks, MXResNet, the losses, training with checkpoints, the
run folder's manifest and the results a notebook records. Imports engine and data; a new setting or model goes here."""
