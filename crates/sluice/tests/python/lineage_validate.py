"""Checks OpenLineage events (one JSON object per line) with the openlineage-python
client's models: each event is rebuilt from its JSON with the client's classes
(attrs: an unknown key, a missing field, a bad runId or eventTime raises), then
serialised back with the client's Serde and compared with the input, so every key
sluice wrote is one the models know, at the facet versions the client writes.
Prints a summary of the events as JSON for the Rust test.

Usage: python lineage_validate.py EVENTS.ndjson
"""

import copy
import json
import sys

from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated import (
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
)
from openlineage.client.serde import Serde


def facet_kwargs(d):
    kwargs = {k: v for k, v in d.items() if k != "_schemaURL"}
    if "_producer" in kwargs:
        kwargs["producer"] = kwargs.pop("_producer")
    return kwargs


def run_facets(facets):
    out = {}
    for name, f in facets.items():
        if name == "parent":
            kw = facet_kwargs(f)
            out[name] = parent_run.ParentRunFacet(
                run=parent_run.Run(**kw.pop("run")),
                job=parent_run.Job(**kw.pop("job")),
                **kw,
            )
        elif name == "errorMessage":
            out[name] = error_message_run.ErrorMessageRunFacet(**facet_kwargs(f))
        else:
            raise ValueError(f"unexpected run facet {name}")
    return out


def dataset_facets(facets):
    out = {}
    for name, f in facets.items():
        if name == "schema":
            kw = facet_kwargs(f)
            fields = [schema_dataset.SchemaDatasetFacetFields(**x) for x in kw.pop("fields")]
            out[name] = schema_dataset.SchemaDatasetFacet(fields=fields, **kw)
        else:
            raise ValueError(f"unexpected dataset facet {name}")
    return out


def output_facets(facets):
    out = {}
    for name, f in facets.items():
        if name == "outputStatistics":
            out[name] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(**facet_kwargs(f))
        else:
            raise ValueError(f"unexpected output facet {name}")
    return out


def build(event):
    e = copy.deepcopy(event)
    job = e.pop("job")
    job_facets = {
        name: job_type_job.JobTypeJobFacet(**facet_kwargs(f)) for name, f in job.pop("facets", {}).items()
    }
    run = e.pop("run")
    inputs = [
        InputDataset(namespace=d["namespace"], name=d["name"], facets=dataset_facets(d.get("facets", {})))
        for d in e.pop("inputs", [])
    ]
    outputs = [
        OutputDataset(
            namespace=d["namespace"],
            name=d["name"],
            facets=dataset_facets(d.get("facets", {})),
            outputFacets=output_facets(d.get("outputFacets", {})),
        )
        for d in e.pop("outputs", [])
    ]
    schema_url = e.pop("schemaURL")
    built = RunEvent(
        eventType=RunState(e.pop("eventType")),
        eventTime=e.pop("eventTime"),
        producer=e.pop("producer"),
        run=Run(runId=run["runId"], facets=run_facets(run.get("facets", {}))),
        job=Job(namespace=job["namespace"], name=job["name"], facets=job_facets),
        inputs=inputs,
        outputs=outputs,
    )
    if e:
        raise ValueError(f"unexpected event keys {sorted(e)}")
    if built.schemaURL != schema_url:
        raise ValueError(f"schemaURL {schema_url} is not the client's {built.schemaURL}")
    return built


def drop_empty(obj):
    """Serde drops empty dicts inside lists and None values; compare like with like."""
    if isinstance(obj, dict):
        return {k: drop_empty(v) for k, v in obj.items() if v is not None and v != {} and v != []}
    if isinstance(obj, list):
        return [drop_empty(v) for v in obj]
    return obj


def main():
    summary = []
    with open(sys.argv[1]) as f:
        for number, line in enumerate(f, 1):
            event = json.loads(line)
            built = build(event)
            again = Serde.to_dict(built)
            if drop_empty(again) != drop_empty(event):
                raise SystemExit(
                    f"line {number}: the client's models do not round-trip the event\n"
                    f"sent:  {json.dumps(event, sort_keys=True)}\nmodel: {json.dumps(again, sort_keys=True)}"
                )
            facets = built.run.facets or {}
            summary.append(
                {
                    "eventType": built.eventType.value,
                    "job": built.job.name,
                    "runId": built.run.runId,
                    "parentRunId": facets["parent"].run.runId if "parent" in facets else None,
                    "error": facets["errorMessage"].message if "errorMessage" in facets else None,
                    "inputs": [d.name for d in built.inputs],
                    "outputs": [
                        {
                            "namespace": d.namespace,
                            "name": d.name,
                            "fields": [[x.name, x.type] for x in d.facets["schema"].fields]
                            if d.facets and "schema" in d.facets
                            else None,
                            "rowCount": d.outputFacets["outputStatistics"].rowCount
                            if d.outputFacets and "outputStatistics" in d.outputFacets
                            else None,
                        }
                        for d in built.outputs
                    ],
                }
            )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
