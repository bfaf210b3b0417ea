"""sparse-run: reproduce sparse-neural-network papers with one command."""
__version__ = "0.1.0"
