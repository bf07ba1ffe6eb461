"""The text exposition: what a Prometheus parser reads back is what the families hold."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from larpix_dqm.exporter.metrics.exposition import Family, render


def test_help_and_label_values_with_backslashes_quotes_and_newlines_parse_back_unchanged():
    help_text = 'first line\nsecond line with a \\ backslash and "quotes"'
    label = 'a "quoted"\\path\nwith a newline'
    fam = Family("larpix_example", "gauge", help_text).add(("name",), [(label,)], [1.5])
    fam_nan = Family("larpix_other", "counter", "plain").add((), [()], [math.nan], "_total")
    text = render([fam, fam_nan])
    assert text.count("\n") == 6, text  # no raw newline from the HELP text or the label value
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["larpix_example"].documentation == help_text
    (only,) = parsed["larpix_example"].samples
    assert only.labels == {"name": label} and only.value == 1.5
    assert math.isnan(parsed["larpix_other"].samples[0].value)
