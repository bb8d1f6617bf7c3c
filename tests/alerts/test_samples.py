"""Exported metrics become the samples rules see; the series history stays bounded."""

from __future__ import annotations

from agent.alerts.samples import Sample, SeriesStore, to_samples
from tests.alerts import T0, Telemetry


def by_name(samples: list[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by metric name."""
    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.metric, []).append(sample)
    return grouped


def test_counters_and_gauges_are_their_values() -> None:
    telemetry = Telemetry()
    telemetry.instruments.r2_transfers.add(3, {"r2.provider": "dropbox", "outcome": "timeout"})
    telemetry.set_gauge("process.memory.utilization", 0.5)
    grouped = by_name(to_samples(telemetry.collect(), at=T0))
    [counter] = grouped["r2.transfers"]
    [gauge] = grouped["process.memory.utilization"]
    assert (counter.value, counter.counter, dict(counter.attributes)) == (
        3.0,
        True,
        {"r2.provider": "dropbox", "outcome": "timeout"},
    )
    assert (gauge.value, gauge.counter, gauge.time) == (0.5, False, T0)


def test_histograms_are_seen_as_count_and_sum() -> None:
    telemetry = Telemetry()
    for seconds in (0.5, 1.5):
        telemetry.instruments.imap_poll_duration.record(seconds, {"outcome": "ok"})
    grouped = by_name(to_samples(telemetry.collect()))
    assert "imap.poll.duration" not in grouped
    assert grouped["imap.poll.duration.count"][0].value == 2.0
    assert grouped["imap.poll.duration.sum"][0].value == 2.0


def points(values: list[tuple[float, float]], metric: str = "c") -> list[Sample]:
    """Counter samples of one series at (offset, value)."""
    return [Sample(metric, {}, v, T0 + t, counter=True) for t, v in values]


def test_increase_counts_a_counter_reset_from_zero() -> None:
    store = SeriesStore({"c": 600.0}, staleness=45.0)
    store.record(points([(0, 10), (15, 14), (30, 2), (45, 5)]))
    assert store.increase("c", {}, 600.0, T0 + 45) == {(): 4 + 2 + 3}


def test_increase_needs_two_samples_in_the_window() -> None:
    store = SeriesStore({"c": 60.0}, staleness=45.0)
    store.record(points([(0, 10), (100, 12)]))
    assert store.increase("c", {}, 60.0, T0 + 100) == {}


def test_rate_is_per_second_between_first_and_last_sample() -> None:
    store = SeriesStore({"c": 600.0}, staleness=45.0)
    store.record(points([(0, 0), (60, 30)]))
    assert store.rate("c", {}, 600.0, T0 + 60) == {(): 0.5}


def test_ratio_with_zero_denominator_is_no_data() -> None:
    store = SeriesStore({"c": 600.0}, staleness=45.0)
    store.record(points([(0, 5), (15, 5)]))
    assert store.ratio(("c", {}), ("c", {}), 600.0, T0 + 15) is None


def test_matchers_select_series_by_exact_attribute_values() -> None:
    store = SeriesStore({"g": 0.0}, staleness=45.0)
    store.record([Sample("g", {"mode": "a"}, 1.0, T0), Sample("g", {"mode": "b"}, 2.0, T0)])
    assert store.value("g", {"mode": "b"}, T0) == {(("mode", "b"),): 2.0}


def test_exclude_drops_the_series_with_that_attribute_value() -> None:
    store = SeriesStore({"g": 0.0}, staleness=45.0)
    store.record(
        [
            Sample("g", {"mode": "a"}, 1.0, T0),
            Sample("g", {"mode": "b"}, 2.0, T0),
            Sample("g", {"kind": "x"}, 3.0, T0),
        ]
    )
    kept = store.value("g", {}, T0, exclude={"mode": "a"})
    assert kept == {(("mode", "b"),): 2.0, (("kind", "x"),): 3.0}


def test_ratio_whose_denominator_grew_less_than_its_minimum_is_no_data() -> None:
    store = SeriesStore({"c": 600.0}, staleness=45.0)
    store.record(points([(0, 0), (15, 4)]))
    assert store.ratio(("c", {}), ("c", {}), 600.0, T0 + 15, min_denominator=5) is None
    store.record(points([(30, 5)]))
    assert store.ratio(("c", {}), ("c", {}), 600.0, T0 + 30, min_denominator=5) == 1.0


def test_a_series_not_exported_for_the_staleness_period_has_no_value() -> None:
    store = SeriesStore({"g": 0.0}, staleness=45.0)
    store.record([Sample("g", {}, 1.0, T0)])
    assert store.value("g", {}, T0 + 30) == {(): 1.0}
    assert store.value("g", {}, T0 + 60) == {}


def test_metrics_no_rule_reads_are_not_kept() -> None:
    store = SeriesStore({"g": 0.0}, staleness=45.0)
    store.record([Sample("other", {}, 1.0, T0)])
    assert store.size() == 0


def test_history_is_bounded_by_window_and_point_cap() -> None:
    store = SeriesStore({"c": 3600.0, "g": 0.0}, staleness=45.0, max_points=100)
    for i in range(20_000):  # one day of 5-second exports
        store.record(
            [
                Sample("c", {}, float(i), T0 + 5 * i, counter=True),
                Sample("g", {}, float(i), T0 + 5 * i),
            ]
        )
    assert store.size() <= 101
    now = T0 + 5 * 19_999
    [increase] = store.increase("c", {}, 3600.0, now).values()
    resolution = 2 * (3600 + 45) / 100
    assert (3600 - resolution) / 5 <= increase <= 3600 / 5


def test_delta_sums_are_accumulated_into_a_counter() -> None:
    store = SeriesStore({"c": 600.0}, staleness=45.0)
    store.record([Sample("c", {}, 2.0, T0 + t, counter=True, delta=True) for t in (0, 15, 30)])
    assert store.increase("c", {}, 600.0, T0 + 30) == {(): 4.0}
