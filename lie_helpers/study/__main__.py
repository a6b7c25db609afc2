"""`python -m lie_helpers.study`: train and analyse the study's runs (`make study`)."""
from .core import main

if __name__ == "__main__":
    raise SystemExit(main())
