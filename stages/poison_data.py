"""DVC stage `poison-data`: validate params.yaml, then run ptdefense.pipeline.poison_data."""

from ptdefense.pipeline import poison_data, run_stage

if __name__ == "__main__":
    run_stage(poison_data)
