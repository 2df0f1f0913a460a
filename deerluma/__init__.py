"""deerluma: an async SDK for DeerAPI's Dream Machine (Luma) video generation."""

# Before anything else is imported: the command's Ctrl-C while it imports, quiet.
from . import _starting  # noqa: F401

# isort: split
import logging
from importlib.metadata import PackageNotFoundError, version

from ._batch import BatchResult
from ._callbacks import CallbackAnswer, CallbackApp, CallbackView
from ._callbacks import Handler as CallbackHandler
from ._create import AspectRatio, CreateOptions
from ._decode import decode_generation
from ._download import Asset, OnProgress
from ._gate import RateView
from ._gateway import GatewayView
from ._history import TimingHistory
from ._models import Generation, GenerationState, Media, Video
from ._policy import PollPolicy, Seconds
from ._session import PolicyTimeout, Session
from ._stream import Updates
from ._sync import SyncSession, SyncUpdates
from ._wait import OnUpdate
from .exceptions import (
    APIError,
    ArgumentError,
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
from .jobs import Job, JobConflict, JobResult, JobState, Ledger, RunStats

# A library logs; the application decides where the records go.
logging.getLogger("deerluma").addHandler(logging.NullHandler())

try:
    __version__ = version("deerluma")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "APIError",
    "ArgumentError",
    "AspectRatio",
    "Asset",
    "AuthenticationError",
    "BatchResult",
    "CallbackAnswer",
    "CallbackApp",
    "CallbackHandler",
    "CallbackView",
    "ConfigurationError",
    "CreateOptions",
    "CreateOutcomeUnknown",
    "DeadlineExceeded",
    "DecodeError",
    "DeerLumaError",
    "DestinationError",
    "DestinationExists",
    "DownloadError",
    "GatewayView",
    "Generation",
    "GenerationFailed",
    "GenerationState",
    "InvalidTaskId",
    "Job",
    "JobConflict",
    "JobResult",
    "JobState",
    "Ledger",
    "Media",
    "NotFoundError",
    "OnProgress",
    "OnUpdate",
    "PolicyTimeout",
    "PollPolicy",
    "RateLimitError",
    "RateView",
    "RunStats",
    "Seconds",
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
