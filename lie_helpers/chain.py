"""`python -m lie_helpers.chain`, the README's command: the chain lives in lie_helpers.pipeline.chain."""
from .pipeline.chain import main

if __name__ == "__main__":
    raise SystemExit(main())
