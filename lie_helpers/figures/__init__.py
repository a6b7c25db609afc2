"""Every figure a notebook saves, in one style (colours, captions), and the interactive heatmap page. Imports engine
to study; a new figure goes here, as a function the notebook calls."""
