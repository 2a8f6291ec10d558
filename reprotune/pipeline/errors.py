"""The one exception a stage raises for something the user can fix; stage.run prints it as one line."""


class InputError(Exception):
    """The user's data, params or environment stop the stage; the message says what to change."""
