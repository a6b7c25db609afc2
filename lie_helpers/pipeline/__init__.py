"""Running things: the notebook chain, distributed analysis, the GPU check, benchmark timing and the publish
script. Imports every other layer; nothing imports it (the notebooks and the command line do)."""
