"""Reads a Prometheus text exposition on stdin with the Prometheus
project's own parser (prometheus_client) and prints every sample as JSON:
[{"family", "type", "name", "labels", "value"}]. Any line the parser
refuses fails with its error."""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        value = sample.value
        samples.append({
            "family": family.name,
            "type": family.type,
            "name": sample.name,
            "labels": sample.labels,
            "value": None if math.isnan(value) else value,
        })
json.dump(samples, sys.stdout)
