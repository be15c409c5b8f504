"""Checks the static lineage of `sluice docs lineage --format openlineage` (JobEvents,
one per line) with the openlineage-python client's models: each event is rebuilt
from its JSON with the client's classes (attrs: an unknown key or a missing field
raises), serialised back with the client's Serde and compared with the input, so
every key sluice wrote is one the models know. Prints, as JSON, each output
dataset's column lineage: {"<dataset>.<column>": [[input "<dataset>.<field>",
type, subtype], ...]}, and its dataset-level (indirect) inputs under
"<dataset>.*".

Usage: python lineage_job_events.py EVENTS.ndjson
"""

import copy
import json
import sys

from openlineage.client.event_v2 import InputDataset, Job, JobEvent, OutputDataset
from openlineage.client.generated import (
    column_lineage_dataset as cl,
    documentation_job,
    job_type_job,
    schema_dataset,
    sql_job,
)
from openlineage.client.serde import Serde


def facet_kwargs(d):
    kwargs = {k: v for k, v in d.items() if k != "_schemaURL"}
    if "_producer" in kwargs:
        kwargs["producer"] = kwargs.pop("_producer")
    return kwargs


def input_field(f):
    kw = dict(f)
    transformations = [cl.Transformation(**t) for t in kw.pop("transformations", [])]
    return cl.InputField(transformations=transformations, **kw)


def dataset_facets(facets):
    out = {}
    for name, f in facets.items():
        kw = facet_kwargs(f)
        if name == "schema":
            fields = [schema_dataset.SchemaDatasetFacetFields(**x) for x in kw.pop("fields")]
            out[name] = schema_dataset.SchemaDatasetFacet(fields=fields, **kw)
        elif name == "columnLineage":
            fields = {
                column: cl.Fields(inputFields=[input_field(i) for i in v.pop("inputFields")], **v)
                for column, v in kw.pop("fields").items()
            }
            dataset = [input_field(i) for i in kw.pop("dataset", [])]
            out[name] = cl.ColumnLineageDatasetFacet(fields=fields, dataset=dataset, **kw)
        else:
            raise ValueError(f"unexpected dataset facet {name}")
    return out


def job_facets(facets):
    out = {}
    for name, f in facets.items():
        kw = facet_kwargs(f)
        if name == "jobType":
            out[name] = job_type_job.JobTypeJobFacet(**kw)
        elif name == "sql":
            out[name] = sql_job.SQLJobFacet(**kw)
        elif name == "documentation":
            out[name] = documentation_job.DocumentationJobFacet(**kw)
        else:
            raise ValueError(f"unexpected job facet {name}")
    return out


def build(event):
    e = copy.deepcopy(event)
    job = e.pop("job")
    inputs = [
        InputDataset(namespace=d["namespace"], name=d["name"], facets=dataset_facets(d.get("facets", {})))
        for d in e.pop("inputs", [])
    ]
    outputs = [
        OutputDataset(namespace=d["namespace"], name=d["name"], facets=dataset_facets(d.get("facets", {})))
        for d in e.pop("outputs", [])
    ]
    schema_url = e.pop("schemaURL")
    built = JobEvent(
        eventTime=e.pop("eventTime"),
        producer=e.pop("producer"),
        job=Job(namespace=job["namespace"], name=job["name"], facets=job_facets(job.get("facets", {}))),
        inputs=inputs,
        outputs=outputs,
    )
    if e:
        raise ValueError(f"unexpected event keys {sorted(e)}")
    if built.schemaURL != schema_url:
        raise ValueError(f"schemaURL {schema_url} is not the client's {built.schemaURL}")
    return built


def drop_empty(obj):
    """Serde drops empty dicts and lists and None values; compare like with like."""
    if isinstance(obj, dict):
        return {k: drop_empty(v) for k, v in obj.items() if v is not None and v != {} and v != []}
    if isinstance(obj, list):
        return [drop_empty(v) for v in obj]
    return obj


def main():
    lineage = {}
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
            for out in built.outputs:
                facet = (out.facets or {}).get("columnLineage")
                if facet is None:
                    continue

                def refs(fields):
                    return [
                        [f"{i.name}.{i.field}", t.type, t.subtype] for i in fields for t in (i.transformations or [])
                    ]

                for column, fields in facet.fields.items():
                    lineage[f"{out.name}.{column}"] = refs(fields.inputFields)
                lineage[f"{out.name}.*"] = refs(facet.dataset or [])
    print(json.dumps(lineage))


if __name__ == "__main__":
    main()
