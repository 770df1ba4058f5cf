"""Built-in reporters, registered through the ``adcore`` entry point like any plugin's."""
