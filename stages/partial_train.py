"""DVC stage `partial-train`: validate params.yaml, then run ptdefense.pipeline.partial_train."""

from ptdefense.pipeline import partial_train, run_stage

if __name__ == "__main__":
    run_stage(partial_train)
