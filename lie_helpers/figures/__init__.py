"""Figures: every figure a notebook saves, one module per idea, one style (`style`: colours, captions, saving).
May import every earlier layer (engine, data, training, analysis, study), never `pipeline`.

    style      set_style, save_figure and the caption, one colour per attribute
    training   notebook 01 (and 03's training curves): example images, base rates, training curves
    theory     notebook 00: the toy problems of the lesson
    brackets   notebooks 02 and 03: the RMS law, attributes over training, first-order baselines, real swaps
    heatmaps   notebook 03: logit-perturbation heatmaps (static, and a viewer for a running kernel)
    page       notebook 03: the heatmaps as one self-contained HTML page (page_template.html)
    study      notebook 04: arm profiles, contrasts, the dial
    symmetry   notebook 05: conserved quantities of fields and brackets
    widgets    live figures redrawn by ipywidgets controls (notebooks 00 and 03)

A new figure goes into the module of its notebook's idea; it returns the Figure, and the notebook saves it
with `style.save_figure` and a caption naming the profile and the data.
"""
