"""Errors a user can fix: the CLI prints the message alone and exits non-zero, no traceback."""


class PipelineError(Exception):
    """Bad input or a refused run. The message names the file or params key and what to do."""

    exit_code = 2


class BudgetExceeded(PipelineError):
    """The estimate stage's gate: over budget, or no plan fits in memory."""

    exit_code = 3
