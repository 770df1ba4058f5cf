"""``ad report``: finished runs compared (Markdown, CSV, charts, HTML, paper layout)."""
