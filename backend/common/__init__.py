"""Shared by every stage: the one error type (UserError), atomic writes, the run-folder layout (every file name), config -> CLI."""
