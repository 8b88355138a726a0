"""The errors of dataset loading (no torch, no numpy: the stage scripts catch them before any heavy import)."""


class DatasetError(RuntimeError):
    """A dataset could not be loaded; the message names the file or array and the fix."""


class DatasetUnavailable(DatasetError):
    """No local copy was found and the download failed (or was disabled)."""


class DatasetInvalid(DatasetError):
    """The files exist but are corrupt or inconsistent."""
