"""``memplan serve``: a local web page drawing the same Reports the CLI prints (the ``web`` extra).

``memplan.web.app.create_app()`` builds the FastAPI application: the page (``static/``), plotly.js
served from the installed plotly package (no network), and a JSON API whose answers are, byte
for byte, the CLI's ``--json`` (the same parsers and ``build_report`` functions:
``memplan.cli.schema``). ``memplan.web.bounds`` holds the limits every request is held to.
Nothing here is imported by the CLI unless ``memplan serve`` runs.
"""
