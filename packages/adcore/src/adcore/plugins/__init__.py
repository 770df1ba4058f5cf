"""The registry over the ``adcore`` entry points; plugin failures as one paragraph."""
