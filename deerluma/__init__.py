"""deerluma: an async SDK for DeerAPI's Dream Machine (Luma) video generation."""

import logging
from importlib.metadata import PackageNotFoundError, version

from ._batch import BatchResult
from ._callbacks import CallbackView
from ._decode import decode_generation
from ._gate import RateView
from ._history import TimingHistory
from ._models import Generation, GenerationState, Media, Video
from ._policy import PollPolicy
from ._session import Session
from ._stream import Updates
from ._sync import SyncSession, SyncUpdates
from .exceptions import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    CreateOutcomeUnknown,
    DeadlineExceeded,
    DecodeError,
    DeerLumaError,
    DestinationError,
    DestinationExists,
    DownloadError,
    GenerationFailed,
    InvalidTaskId,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
    WaitTimeout,
)

# A library logs; the application decides where the records go.
logging.getLogger("deerluma").addHandler(logging.NullHandler())

try:
    __version__ = version("deerluma")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "APIError",
    "AuthenticationError",
    "BatchResult",
    "CallbackView",
    "ConfigurationError",
    "CreateOutcomeUnknown",
    "DeadlineExceeded",
    "DecodeError",
    "DeerLumaError",
    "DestinationError",
    "DestinationExists",
    "DownloadError",
    "Generation",
    "GenerationFailed",
    "GenerationState",
    "InvalidTaskId",
    "Media",
    "NotFoundError",
    "PollPolicy",
    "RateLimitError",
    "RateView",
    "ServerError",
    "Session",
    "SyncSession",
    "SyncUpdates",
    "TimingHistory",
    "TransportError",
    "Updates",
    "Video",
    "WaitTimeout",
    "__version__",
    "decode_generation",
]
