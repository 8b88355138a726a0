"""DVC stage `train-backdoored`: validate params.yaml, then run ptdefense.pipeline.train_backdoored."""

from ptdefense.pipeline import train_backdoored, run_stage

if __name__ == "__main__":
    run_stage(train_backdoored)
