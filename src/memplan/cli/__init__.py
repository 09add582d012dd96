"""The command-line interface: thin parsers that call an estimator and render a Report."""
