"""The one error type that commands raise for an expected failure."""


class CliError(Exception):
    """Printed as one line by ``tidings.cli.main``; never a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
