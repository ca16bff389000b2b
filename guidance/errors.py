"""The one error type the library raises for user-facing problems."""


class GuidanceError(ValueError):
    """A problem with a guidance spec, config, pipeline or scheduler.

    The message is one paragraph that names the problem and how to fix it.
    """
