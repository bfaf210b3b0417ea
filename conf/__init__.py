"""The config groups (YAML). Importing this package registers the typed schema they inherit from."""
from sparse_run.config.schema import register

register()
