"""The mathematics: per-example gradient fields, Lie brackets (SGD's and Adam's), swap differences, pushforwards,
the toy problems that verify them, and shared numerics. Imports no other layer: a new bracket or identity goes here."""
