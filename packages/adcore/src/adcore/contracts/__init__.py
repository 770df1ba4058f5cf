"""What plugins implement: records, hook specs, Method, Dataset, Preprocessing."""
