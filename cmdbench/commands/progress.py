"""Progress bars of the long commands (``ref-stats``, ``evaluate``, ``sample``, ``bench``): tqdm on stderr,
counting clips (rate in clips/s, ETA when the total is known), shown only on a terminal and never with
``--no-progress``, so piped output and logs stay clean.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is shown on stderr only when stderr is a terminal)")


def progress_enabled(args: argparse.Namespace, stream: Any = None) -> bool:
    """A bar is drawn when ``--no-progress`` is absent and ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not getattr(args, "no_progress", False) and bool(callable(isatty) and isatty())


def progress_bar(*, total: int | None, desc: str, unit: str = "clip", enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr counting ``unit``s (tqdm prints the rate as ``clip/s`` and, with a total, the ETA).

    ``delay``: nothing is drawn for the first half second, so instant runs (cached statistics) stay quiet.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1, delay=0.5)


class CountingExtractor:
    """A feature extractor that advances a progress bar by the clips of every ``extract`` call.

    Everything else (``name``, ``dim``, ``checksum``, ``preprocessing``, ``device``, ``dtype``,
    ``weights_path``, ...) is the wrapped extractor's, so statistics, cache keys and records are unchanged.
    """

    def __init__(self, extractor: Any, bar: Any) -> None:
        self._extractor, self._bar = extractor, bar

    def __getattr__(self, name: str) -> Any:
        return getattr(self._extractor, name)

    def extract(self, videos: Any) -> Any:
        feats = self._extractor.extract(videos)
        self._bar.update(len(videos))
        return feats
