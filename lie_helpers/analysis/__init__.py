"""What one run shows: bracket records at every checkpoint, first-order baselines (J·g), the RMS law and its null, the
attribute currency, real order effects and symmetry checks. Imports engine, data, training; a new per-run readout goes here."""
