"""DVC stage `isolate`: validate params.yaml, then run ptdefense.pipeline.isolate."""

from ptdefense.pipeline import isolate, run_stage

if __name__ == "__main__":
    run_stage(isolate)
