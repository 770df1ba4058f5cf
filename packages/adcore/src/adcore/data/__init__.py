"""Image and mask decoding, loading in workers, the data check and the support set."""
