"""What a run leaves: results layout, reporters, reports, map and model files, env.json."""
