"""/metrics: a prometheus-client custom collector driven by the metric catalogue.

It reads every value from one `Series.read()` (counters and histograms as last committed,
gauges from the latest samples), the same call every other output reads; exporters.web
serves it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from email.message import Message
from typing import Any, Protocol

from mailpulse.exporters.web import Handler, Page, WebServer
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from mailpulse import catalogue
from mailpulse.state import Histogram, Labels, SeriesKey

log = logging.getLogger(__name__)


class Readable(Protocol):
    def read(self) -> Mapping[SeriesKey, float | Histogram]: ...


def _le(bound: float) -> str:
    return repr(float(bound))


class CatalogueCollector(Collector):
    """Every catalogue metric, with the agent's constant labels first."""

    def __init__(self, series: Readable, common: Mapping[str, str]) -> None:
        self.series = series
        self.common_names = tuple(catalogue.COMMON_LABELS)
        self.common_values = tuple(common[n] for n in self.common_names)

    def collect(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[Labels, Any]]] = defaultdict(list)
        for (name, labels), value in self.series.read().items():
            by_name[name].append((labels, value))
        for m in catalogue.CATALOGUE:
            series = by_name.get(m.name, ())
            names = [*self.common_names, *m.labels]
            family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            if m.type == catalogue.COUNTER:
                family = CounterMetricFamily(m.family_name, m.help, labels=names)
            elif m.type == catalogue.GAUGE:
                family = GaugeMetricFamily(m.name, m.help, labels=names)
            else:
                family = HistogramMetricFamily(m.name, m.help, labels=names)
            for labels, value in series:
                if len(labels) != len(m.labels):
                    # A wiring mistake; never take the whole scrape down for it.
                    log.error("%s: labels %r do not match %r", m.name, labels, m.labels)
                    continue
                full = [*self.common_values, *labels]
                if isinstance(family, HistogramMetricFamily):
                    cumulative = value.cumulative()
                    buckets = [(_le(b), c) for b, c in zip(m.buckets, cumulative, strict=False)]
                    buckets.append(("+Inf", cumulative[-1]))
                    family.add_metric(full, buckets, value.sum)
                else:
                    family.add_metric(full, value)
            yield family


def make_registry(collector: CatalogueCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def metrics_page(registry: CollectorRegistry) -> Handler:
    """The /metrics route: the exposition format the scraper asks for."""

    def page(headers: Message) -> Page:
        encoder, ctype = choose_encoder(headers.get("Accept", ""))
        return Page(encoder(registry), ctype)

    return page


def serve_metrics(server: WebServer, series: Readable, common: Mapping[str, str]) -> None:
    """Add /metrics, with every catalogue series and these constant labels, to the server."""
    registry = make_registry(CatalogueCollector(series, common))
    server.route("/metrics", metrics_page(registry), "Metrics", compress=True)
