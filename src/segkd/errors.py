"""Errors caused by the user's input (params, data, checkpoints): reported as one line, exit code 2."""


class UserError(Exception):
    """Bad input that the user can fix; the message names the file or key."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""
