"""``ad sweep``: a grid of experiments (methods x data sets x shots x seeds x any key), run
unit by unit (one category of one experiment) locally or on a Ray cluster, then summarised.

``spec`` reads and expands the sweep file, ``plan`` resolves each point and finds the
unfinished units, ``unit`` runs one, ``executors`` hold the local and Ray executors,
``summary`` writes the run and sweep summaries, ``driver`` ties them together.
"""
