"""The errors raised by :mod:`lightning_dnn.hub`, so callers can catch each failure by its kind.

* :class:`StrictLoadError` (a ``RuntimeError``, like torch's strict ``load_state_dict``): a strict load found
  missing, unexpected or shape-mismatched tensors; nothing was copied; ``.report`` has the full lists.
* :class:`UnsafeWeightsError` (a ``ValueError``): a folder or repo offers weights only as pickle files
  (``pytorch_model.bin``, ``*.pt``, ``*.pkl``, ``*.ckpt``), or its ``model.safetensors`` is really a pickle or a
  ``torch.save`` archive; we never unpickle.
* :class:`WeightsFileError` (a ``ValueError``): ``model.safetensors`` is empty, truncated or not a safetensors
  file; the message names the file and what is wrong.
* :class:`HubDownloadError` (an ``OSError``): a file could not be fetched from the Hub; the message names the repo,
  file, revision and endpoint and says whether a cached copy exists.
* :class:`ChecksumMismatchError` (a :class:`HubDownloadError`): a file does not have the sha256 the zoo index pins:
  a downloaded file (removed from the cache), or a file of a local zoo folder when the Hub cannot serve the pinned
  one instead (left as it is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_dnn.hub._plan import LoadReport

__all__ = [
    "ChecksumMismatchError",
    "HubDownloadError",
    "StrictLoadError",
    "UnsafeWeightsError",
    "WeightsFileError",
]


class StrictLoadError(RuntimeError):
    """A strict load found problems; the target network was left untouched.

    Args:
        message: the full explanation (every problematic name is listed).
        report: the :class:`~lightning_dnn.hub.partial.LoadReport` computed before anything was copied (the
            library always gives it; ``None`` only for an error constructed without one).

    Example:
        >>> from lightning_dnn.hub.partial import LoadReport
        >>> err = StrictLoadError("1 missing: output.linear.bias", LoadReport(missing=["output.linear.bias"]))
        >>> err.report.missing
        ['output.linear.bias']
    """

    def __init__(self, message: str, report: LoadReport | None = None) -> None:
        """Keep ``message`` and ``report``."""
        # `report` has a default so the exception pickles (BaseException re-creates it from `args` only, then
        # restores `report` from the instance's __dict__).
        super().__init__(message)
        self.report = report


class UnsafeWeightsError(ValueError):
    """Weights are only available as pickle files, which can run arbitrary code when loaded.

    Args:
        message: the explanation, naming the files found.
        files: the pickle file names that were refused.

    Example:
        >>> UnsafeWeightsError("refused", ["pytorch_model.bin"]).files
        ['pytorch_model.bin']
    """

    def __init__(self, message: str, files: list[str] | None = None) -> None:
        """Keep ``message`` and the refused ``files``."""
        super().__init__(message)
        self.files = list(files or [])


class WeightsFileError(ValueError):
    """``model.safetensors`` cannot be read: empty, truncated, or not a safetensors file.

    Args:
        message: the explanation, naming the file, what was expected and what was found.
        path: the file.

    Example:
        >>> WeightsFileError("truncated", "/models/m/model.safetensors").path
        '/models/m/model.safetensors'
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        """Keep ``message`` and the file's ``path``."""
        super().__init__(message)
        self.path = path


class HubDownloadError(OSError):
    """A file could not be fetched from the Hub (or read from its cache).

    Args:
        message: the full explanation.
        repo_id: the repository, e.g. ``"org/name"``.
        filename: the file in the repository.
        revision: the branch, tag or commit asked for.
        endpoint: the Hub endpoint used.
        cached: whether the cache holds a copy of the file for that revision (``None`` when unknown).

    Example:
        >>> err = HubDownloadError("no network", repo_id="org/m", filename="config.json", cached=False)
        >>> (err.repo_id, err.filename, err.cached)
        ('org/m', 'config.json', False)
    """

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        filename: str | None = None,
        revision: str | None = None,
        endpoint: str | None = None,
        cached: bool | None = None,
    ) -> None:
        """Keep ``message`` and the fields that say what failed where."""
        super().__init__(message)
        self.repo_id = repo_id
        self.filename = filename
        self.revision = revision
        self.endpoint = endpoint
        self.cached = cached

    # `filename` is also OSError's own attribute, which would make OSError format "[Errno None] None: ..."
    # and pickle errno-style arguments; keep our message and our fields explicit.
    def __str__(self) -> str:
        """The message, without OSError's errno formatting."""
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the message and every field (``filename`` included)."""
        state = {**self.__dict__, "filename": self.filename}
        return (type(self), (str(self),), state)


class ChecksumMismatchError(HubDownloadError):
    """A file's sha256 differs from the one pinned by the zoo index.

    A downloaded file is deleted from the cache; a file of a local zoo folder is reported and left as it is.

    Args:
        message: the full explanation.
        expected: the sha256 the zoo index pins (``None`` when unknown).
        actual: the sha256 the file has (``None`` when unknown).
        **fields: the :class:`HubDownloadError` fields (``repo_id``, ``filename``, ...).

    Example:
        >>> err = ChecksumMismatchError("sha256 mismatch", repo_id="org/m", filename="model.safetensors")
        >>> isinstance(err, HubDownloadError), err.expected
        (True, None)
    """

    def __init__(
        self, message: str, *, expected: str | None = None, actual: str | None = None, **fields: Any
    ) -> None:
        """Keep ``message``, the two hashes and the download fields."""
        super().__init__(message, **fields)
        self.expected = expected
        self.actual = actual
