"""MLflow logging for the stages: store resolution, run grouping, and failure policy.

Grouping: every stage run is a child of one parent run per pipeline, keyed by the DVC experiment
name when `dvc exp run` sets one, else by the digest of the validated params and the git commit. The parent holds all
params, so two experiments (say freeze_layers 1 against 3) sit side by side in the MLflow UI;
every run also carries the tags `ptdefense.pipeline`, `ptdefense.params_digest` and
`ptdefense.stage` for filtering.

The experiment carries MLflow 3's `mlflow.experimentKind` tag (`custom_model_development`), so the
UI opens on its model-training view. The parent run is open from the first stage's start to the end
of `evaluate`, which closes it and copies the comparison metrics onto it. Training stages log their
models in MLflow's pytorch flavour (uint8 pixels in, logits out, with a signature and an input
example) and the datasets they read as dataset inputs, with DVC's md5 of the file as the digest.

Failure policy: a tracking store that cannot be reached must not cost the stage its results. The
stage's DVC outputs are written regardless; the failure is reported in one line, and
`mlflow.required: true` turns it into an error instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from ptdefense.artifacts import repo_root
from ptdefense.params import Params

PIPELINE_TAG = "ptdefense.pipeline"
DIGEST_TAG = "ptdefense.params_digest"
STAGE_TAG = "ptdefense.stage"
ROLE_TAG = "ptdefense.role"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class TrackingError(RuntimeError):
    """The tracking store failed and `mlflow.required` is true."""


def tracking_uri(params: Params) -> str:
    """$MLFLOW_TRACKING_URI, else mlflow.tracking_uri, else sqlite:///<real repo root>/mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    if not uri:
        return f"sqlite:///{repo_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative sqlite path would land inside a temporary experiment copy; anchor it.
        return f"sqlite:///{repo_root() / uri.removeprefix('sqlite:///')}"
    return uri


def _local_artifact_root(uri: str) -> str | None:
    """Runs in a sqlite store keep artifacts beside it, not in ./mlruns of a temporary workspace."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def pipeline_key(params: Params) -> str:
    """The DVC experiment's name under `dvc exp run`; else the params digest at the git commit."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    commit = _git_commit()
    return f"params-{params.digest()}" + (f"@{commit[:8]}" if commit else "")


def _git_commit() -> str | None:
    commit = os.environ.get("DVC_EXP_BASELINE_REV")
    if commit:
        return commit
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=repo_root()).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class StageRun:
    """`with StageRun("isolate", params, logged) as run: run.log_metrics(...)`.

    Each logging call is guarded: after the first failure the run goes quiet (one warning line),
    unless `mlflow.required` is set, in which case the failure is raised.
    """

    def __init__(self, stage: str, params: Params, stage_params: Mapping[str, Any]) -> None:
        self.stage = stage
        self.params = params
        self.stage_params = flatten(stage_params)
        self.enabled = params.mlflow.enabled
        self.active = False
        self.run_id: str | None = None
        self.parent_run_id: str | None = None

    # -- failure policy --------------------------------------------------------------------------
    def _fail(self, action: str, error: BaseException) -> None:
        message = (f"MLflow: could not {action} at {tracking_uri(self.params)} "
                   f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})")
        if self.params.mlflow.required:
            raise TrackingError(message + "; mlflow.required is true, so the stage fails") from error
        if self.active or self.enabled:
            print(f"WARNING: {message}; outputs are written, tracking is skipped for this stage", file=sys.stderr)
        self.active = False
        self.enabled = False

    def _guard(self, action: str, function, *args, **kwargs):
        if not self.active:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as error:  # mlflow raises many types (MlflowException, requests, sqlalchemy)
            self._fail(action, error)
            return None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "StageRun":
        if not self.enabled:
            return self
        # Fail fast on an unreachable server rather than retrying for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        try:
            self._start()
            self.active = True
        except Exception as error:
            self._fail("start a run", error)
        return self

    def _start(self) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(self.params)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        name = self.params.mlflow.experiment_name
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            experiment_id = client.create_experiment(name, artifact_location=_local_artifact_root(uri),
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            experiment_id = experiment.experiment_id
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # a store made before the tag: open it on training runs
                self._best_effort("tag the experiment", client.set_experiment_tag, experiment_id,
                                  EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        key = pipeline_key(self.params)
        common_tags = {
            PIPELINE_TAG: key,
            DIGEST_TAG: self.params.digest(),
            "freeze_layers": str(self.params.freeze_layers),
            "attack": self.params.attack.name,
            "dataset": self.params.data.name,
            "model": self.params.model.name,
        }
        if os.environ.get("DVC_EXP_NAME"):
            common_tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        commit = _git_commit()
        if commit:
            common_tags["mlflow.source.git.commit"] = commit
        parents = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'pipeline'",
            max_results=1,
        )
        if parents:
            self.parent_run_id = parents[0].info.run_id
            if parents[0].info.status != "RUNNING":  # reopened while this stage runs; its exit closes it again
                client.update_run(self.parent_run_id, status="RUNNING")
        else:
            parent = client.create_run(experiment_id, run_name=f"pipeline {key}",
                                       tags={**common_tags, ROLE_TAG: "pipeline"})
            self.parent_run_id = parent.info.run_id
            flat = {k: ("null" if v is None else v) for k, v in flatten(self.params.model_dump(mode="json")).items()}
            client.log_batch(self.parent_run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in flat.items()])
            # Left open: each stage closes it on exit, so it ends with the pipeline's last stage.
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=self.stage,
            tags={**common_tags, STAGE_TAG: self.stage, ROLE_TAG: "stage", "mlflow.parentRunId": self.parent_run_id},
        )
        self.run_id = run.info.run_id
        mlflow.log_params({k: ("null" if v is None else v) for k, v in self.stage_params.items()})

    def __exit__(self, exc_type, exc, traceback) -> None:
        if not self.active:
            return
        import mlflow

        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        self._guard("end the run", mlflow.end_run, status=status)
        if self.parent_run_id:
            # Every stage closes the parent with its own status and end time, so the parent's duration runs
            # from its first stage's start to its last stage's end, whichever stages DVC ran.
            self._guard("close the pipeline's run", lambda: self._client().set_terminated(self.parent_run_id, status))

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri(self.params))

    def _best_effort(self, action: str, function, *args, **kwargs):
        """For what goes beyond runs, params and metrics (tags, models, datasets, the registry): a failure
        is one warning line, and the run's logging goes on."""
        if not self.active:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as error:  # a model MLflow cannot export, a registry the server does not offer, ...
            print(f"WARNING: MLflow: could not {action} ({type(error).__name__}: "
                  f"{str(error).splitlines()[0][:200] if str(error) else ''}); the stage goes on", file=sys.stderr)
            return None

    # -- logging ---------------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._guard("log metrics", mlflow.log_metrics, clean, step=step)

    def set_tags(self, tags: Mapping[str, str], on_parent: bool = False) -> None:
        """Tags on this stage's run (and on the pipeline's parent run), e.g. isolation's verdict."""
        import mlflow

        self._guard("set tags", mlflow.set_tags, dict(tags))
        if on_parent and self.parent_run_id:
            for key, value in tags.items():
                self._guard("tag the pipeline's run", lambda: self._client().set_tag(self.parent_run_id, key, value))

    def log_pipeline_metrics(self, metrics: Mapping[str, float | int | None]) -> None:
        """Copy the headline metrics onto the parent run, so comparing parents shows params and results."""
        if not self.parent_run_id:
            return
        import time as _time

        import mlflow

        stamp = int(_time.time() * 1000)
        entries = [mlflow.entities.Metric(k, float(v), stamp, 0) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self._guard("log the pipeline's metrics", lambda: self._client().log_batch(self.parent_run_id, metrics=entries))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            self._guard("log artifacts", mlflow.log_artifacts, str(path), artifact_path=artifact_path or path.name)
        elif path.is_file():
            self._guard("log an artifact", mlflow.log_artifact, str(path), artifact_path=artifact_path)

    def log_dataset(self, path: str | Path, images, labels, context: str) -> None:
        """A dataset input of this run: `context` "training" or "evaluation" (model_logging.log_dataset)."""
        from ptdefense.model_logging import log_dataset

        self._best_effort("log a dataset input", log_dataset, Path(path), images, labels, context)

    def registered_model_name(self) -> str | None:
        """`<mlflow.registered_model>-<data.name>-<model.name>`: every version of a name takes the same
        kind of input, and DERs are compared on one dataset and architecture."""
        prefix = self.params.mlflow.registered_model
        return None if prefix is None else f"{prefix}-{self.params.data.name}-{self.params.model.name}"

    def log_model(self, network, examples, register: bool = False) -> None:
        """The trained network as this run's MLflow pytorch model (model_logging.log_model), registered
        under registered_model_name() if `register`."""
        from ptdefense.model_logging import log_model

        self._best_effort("log the model", log_model, network, examples,
                          self.registered_model_name() if register else None)

    def tag_registered_model(self, training_stage: str, metrics: Mapping[str, Any]) -> dict | None:
        """Tag the version that this pipeline's `training_stage` registered with `metrics`, and move the
        best-DER alias to it if no version has a better DER (model_logging). Prints what it did."""
        name = self.registered_model_name()
        if not self.parent_run_id or name is None:
            return None
        from ptdefense.model_logging import tag_registered_version

        def tag():
            client = self._client()
            runs = client.search_runs(
                [client.get_run(self.parent_run_id).info.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
                              f"tags.`{STAGE_TAG}` = '{training_stage}'",
                order_by=["attributes.start_time DESC"], max_results=1)
            if not runs:  # the stage was cached by DVC: no run of this pipeline registered a version
                return None
            return tag_registered_version(client, name, runs[0].info.run_id, dict(metrics), pipeline_key(self.params))

        registered = self._best_effort("tag the registered model", tag)
        if registered:
            print(f"MLflow: {name} version {registered['version']} tagged with the comparison"
                  + (", and given the alias best-der" if registered["alias_moved"] else ""), file=sys.stderr)
        return registered
