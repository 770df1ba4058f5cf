"""The pipeline: components, preparation, prediction, scoring, efficiency, training, predict."""
