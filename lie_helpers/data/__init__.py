"""Data: CelebA's format, reading real CelebA and its tensor cache, the generated data (attribute model, faces,
writing and ground truth), atomic storage and progress reports for the chain's terminal. Imports only the standard library and third-party packages, no
other layer of lie_helpers (profiles pick their data in lie_helpers.training.datasets)."""
