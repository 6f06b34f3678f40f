"""jizhi: the command line, configuration and composition root."""

__version__ = "0.1.0"
