"""Read a process's /metrics over HTTP, the way Prometheus does, and wait for a
condition on it (never a fixed sleep)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Samples]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text: str = answer.read().decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(url: str, done: Callable[[Samples], bool], proc: subprocess.Popen[bytes],
                 timeout: float = 60) -> tuple[str, Samples]:
    """Scrape until `done` holds; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last: tuple[str, Samples] = ("", {})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the process exited with {proc.returncode}")
        try:
            last = scrape(url)
        except OSError:
            pass  # not listening yet
        else:
            if done(last[1]):
                return last
        time.sleep(0.1)
    raise AssertionError(f"metrics never matched within {timeout}s; last scrape:\n{last[0][-3000:]}")
