"""The few Prometheus series `embedkit serve` exports, in the text exposition format.

Names follow TEI's (`te_*`) so dashboards built for TEI read them. A counter and a histogram are a
few lines each; no client library is needed for that.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import ClassVar

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = tuple(2**k for k in range(0, 16))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            label = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{label}"}} {running}')
        out += [f"{name}_sum {self.total:.6f}", f"{name}_count {running}"]
        return out


class Metrics:
    """Thread-safe counters and histograms; `render()` gives the /metrics body."""

    _HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "te_request_count": ("counter", "Requests received, by route"),
        "te_request_success": ("counter", "Requests answered 2xx, by route"),
        "te_request_failure": ("counter", "Requests answered with an error, by error type"),
        "te_embed_count": ("counter", "Texts embedded"),
        "te_request_duration": ("histogram", "Request latency in seconds"),
        "te_request_input_length": ("histogram", "Tokens per input"),
        "te_batch_next_size": ("histogram", "Texts per forward call"),
        "te_batch_next_tokens": ("histogram", "Tokens per forward call"),
        "te_queue_size": ("gauge", "Texts waiting for the model"),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._histograms = {
            "te_request_duration": _Histogram(LATENCY_BUCKETS),
            "te_request_input_length": _Histogram(SIZE_BUCKETS),
            "te_batch_next_size": _Histogram(SIZE_BUCKETS),
            "te_batch_next_tokens": _Histogram(SIZE_BUCKETS),
        }
        self.queue_size = lambda: 0

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] = self._counters[name].get(key, 0) + amount

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            self._histograms[name].observe(value)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in self._HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    for labels, value in sorted(self._counters.get(name, {}).items()):
                        tag = ",".join(f'{k}="{v}"' for k, v in labels)
                        lines.append(f"{name}{{{tag}}} {value:g}" if tag else f"{name} {value:g}")
                elif kind == "histogram":
                    lines += self._histograms[name].lines(name)
                else:
                    lines.append(f"{name} {self.queue_size()}")
        return "\n".join(lines) + "\n"
