"""Prompt-injection screening speed: how long ``screen`` takes over 100 KB of text.

Inputs, each cut to 100 KB: real prose (the pages of Debian's Python manual that
``bench.pydoc`` reads), the same prose sprinkled with zero-width characters (so the
invisible-character patterns and the tag decoding run too), and texts built to make
a backtracking pattern work hardest (a trigger word repeated with no ending, an
``act as`` with its bounded wildcard open on every line). Prints one JSON line with
p50/p95 milliseconds per input. Target: p95 <= 50 ms per 100 KB on an idle host, so
screening every memory and context document of a prompt stays out of the way.
Usage: python -m bench.screening [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.pydoc import load
from bench.swap import percentile
from guest_agent.prompts.screening import screen
from guest_agent.protocol.security import ContentSource

SIZE = 100_000


def inputs() -> dict[str, str]:
    """The texts to screen, by name, each exactly ``SIZE`` characters."""
    prose = "\n\n".join(load().pages.values())
    adversarial = {
        "prose": prose,
        "prose_zero_width": prose.replace(" ", " \u200b", 5_000),
        "ignore_repeated": "ignore all the your of my " * 10,
        "act_as_open": "act as a helpful reviewer of this long document line\n",
    }
    return {name: (text * (SIZE // len(text) + 1))[:SIZE] for name, text in adversarial.items()}


def timed_ms(text: str) -> float:
    started = time.perf_counter()
    screen(text, ContentSource.CONTEXT)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    result: dict[str, object] = {"bench": "screening", "size_chars": SIZE,
                                 "repeats": args.repeats}
    for name, text in inputs().items():
        times = [timed_ms(text) for _ in range(args.repeats)]
        result[name] = {"p50_ms": round(statistics.median(times), 1),
                        "p95_ms": round(percentile(times, 0.95), 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
