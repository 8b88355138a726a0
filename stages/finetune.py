"""DVC stage `finetune`: validate params.yaml, then run ptdefense.pipeline.finetune."""

from ptdefense.pipeline import finetune, run_stage

if __name__ == "__main__":
    run_stage(finetune)
