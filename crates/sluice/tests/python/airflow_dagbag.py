"""Loads a folder of generated DAG files with Airflow's DagBag (as the scheduler's
DAG processor does) and prints what Airflow sees as JSON on stdout: import errors,
and per DAG its tasks with their upstream task ids, operator, and the settings the
export derives from pipeline.yaml. The Rust test compares that with the run plan.

Usage: python airflow_dagbag.py DAG_FOLDER
"""

import json
import os
import sys
import tempfile

# A throwaway AIRFLOW_HOME: no config or database of a real installation is touched.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="sluice-airflow-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"

try:  # Airflow 3
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 2
    from airflow.models.dagbag import DagBag
import airflow


def describe_task(task):
    if hasattr(task, "expand_input"):  # a mapped task (.partial(...).expand(...))
        return {
            "operator": task.operator_name,
            "mapped": {k: v for k, v in task.expand_input.value.items()},
            "upstream": sorted(task.upstream_task_ids),
            "retries": task.partial_kwargs.get("retries", task.retries),
        }
    out = {
        "operator": type(task).__name__,
        "upstream": sorted(task.upstream_task_ids),
        "retries": task.retries,
    }
    if out["operator"] == "KubernetesPodOperator":
        out["image"] = task.image
        out["cmds"] = list(task.cmds)
        out["arguments"] = list(task.arguments)
        out["secrets"] = [
            {"env": s.deploy_target, "secret": s.secret, "key": s.key} for s in task.secrets
        ]
        env = task.env_vars  # a dict as given, or V1EnvVar objects once converted
        out["env_vars"] = dict(env) if isinstance(env, dict) else {e.name: e.value for e in env}
        out["volumes"] = [v.config_map.name for v in task.volumes if v.config_map]
    else:
        out["bash_command"] = task.bash_command
    return out


def main():
    folder = sys.argv[1]
    bag = DagBag(dag_folder=folder)
    result = {
        "airflow_version": airflow.__version__,
        "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
        "dags": {},
    }
    for dag_id, dag in bag.dags.items():
        timetable = dag.timetable
        result["dags"][dag_id] = {
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "schedule": getattr(timetable, "_expression", None),
            "timezone": str(getattr(timetable, "_timezone", "")) or None,
            "tasks": {t.task_id: describe_task(t) for t in dag.tasks},
        }
    # Airflow logs to stdout too: the result is the last line.
    print()
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
