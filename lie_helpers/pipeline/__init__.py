"""Running things: the notebook chain (chain; its stages, the checks before them and the execution of one
notebook in stages, preflight and execution), distributed analysis, the GPU check, benchmark timing and the publish
script. Imports every other layer; nothing imports it (the notebooks and the command line do)."""
