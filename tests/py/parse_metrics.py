"""Parses a Prometheus text exposition from stdin with the Prometheus project's own Python
parser (prometheus_client.parser, Debian's python3-prometheus-client) and prints its samples
as JSON: [{"family", "type", "name", "labels", "value"}]. A malformed exposition raises, and
the test that called it fails."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({
            "family": family.name,
            "type": family.type,
            "name": s.name,
            "labels": dict(s.labels),
            "value": s.value,
        })
json.dump(out, sys.stdout)
