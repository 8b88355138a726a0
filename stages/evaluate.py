"""DVC stage `evaluate`: validate params.yaml, then run ptdefense.pipeline.evaluate."""

from ptdefense.pipeline import evaluate, run_stage

if __name__ == "__main__":
    run_stage(evaluate)
