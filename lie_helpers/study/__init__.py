"""Many runs and their statistics: the study's design, side runs, records, contrasts, verdict, example sets and the
tests over seeds. Imports engine to analysis; a new experiment across runs or seeds goes here."""
