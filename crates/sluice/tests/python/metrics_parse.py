"""Parses `sluice serve`'s /metrics with prometheus_client's OpenMetrics parser and
prints every sample as JSON: [{"family", "type", "name", "labels", "value"}].

The parser is strict (it rejects a missing `# EOF`, bad escaping, a counter without
`_total`, histogram buckets out of order), so a sample list here means the text is
valid OpenMetrics that Prometheus can scrape."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with open(sys.argv[1], encoding="utf-8") as f:
    text = f.read()

samples = []
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        samples.append(
            {
                "family": family.name,
                "type": family.type,
                "name": sample.name,
                "labels": sample.labels,
                "value": sample.value,
            }
        )
print(json.dumps(samples))
