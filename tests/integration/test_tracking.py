"""`train.report_to` through the Trainer's own integrations, offline: TensorBoard event files and a local MLflow
store hold the run's metrics and parameters."""

from __future__ import annotations

import importlib.util

import pytest

import slmtune


def test_tensorboard_and_mlflow_get_the_runs_metrics_and_params(tiny_config, tmp_path):
    cfg = tiny_config(train={"max_steps": 4, "epochs": 1, "report_to": ["tensorboard", "mlflow"]})
    result = slmtune.train(cfg)
    assert result.status == "succeeded"
    run = tmp_path / "run"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file in RUN/tensorboard"
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4] and all(e.value > 0 for e in losses)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlruns.db'}")
    exp = client.get_experiment_by_name("slmtune")
    (mrun,) = client.search_runs([exp.experiment_id])
    assert mrun.info.run_name == "run" and mrun.info.status == "FINISHED"
    history = client.get_metric_history(mrun.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert float(mrun.data.params["learning_rate"]) == cfg["train"]["learning_rate"]
    assert mrun.data.params["max_steps"] == "4"
    # the run's own files are still written as always
    assert (run / "metrics.csv").exists() and (run / "adapter").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_whose_package_is_missing_is_a_config_error(tiny_config):
    with pytest.raises(slmtune.ConfigError) as e:
        slmtune.train(tiny_config(train={"report_to": ["wandb"]}))
    assert "train.report_to: wandb needs the wandb package (pip install wandb" in str(e.value)
