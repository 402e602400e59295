"""Built-in plugin ``simulate``: a longitudinal cohort with known ground truth, from the MNI152
2009a template that nilearn ships (see :mod:`brainsynth_plugins.simulate.template` and
:mod:`brainsynth_plugins.simulate.cohort`)."""
