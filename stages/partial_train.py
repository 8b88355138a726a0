"""DVC stage `partial-train`: PT's first step. The first `freeze_layers` blocks keep their random
initialisation (their BatchNorm statistics re-estimated on the data), and the rest is trained on the
untrusted set. The partly trained model is what isolate ranks the samples with."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's code, the code DVC hashed
from ptdefense.params import Params  # noqa: E402
from ptdefense.stage import run_stage  # noqa: E402


def partial_train(params: Params) -> None:
    import time

    from ptdefense.data.dataset import ImageSet, dataset_info
    from ptdefense.defenses.depth import resolve_freeze_layers
    from ptdefense.defenses.pt import build_partial_model
    from ptdefense.models.catalogue import num_blocks
    from ptdefense.models.io import save_model
    from ptdefense.paths import PARTIAL_MODEL, TRAIN_SET, stage_metrics
    from ptdefense.stage import epoch_logger, finish, log_inputs, logged_params, model_spec, not_per_epoch, setup
    from ptdefense.tracking import StageRun
    from ptdefense.training import FitConfig, fit

    device = setup(params)
    train = ImageSet.load(TRAIN_SET)
    spec = model_spec(params, train.image_shape, dataset_info(TRAIN_SET)["num_classes"])
    logged = {**logged_params(params, "model", "partial"), "freeze_layers": params.freeze_layers}
    with StageRun("partial-train", params, logged) as run:
        log_inputs(run, train)

        def partial_model(freeze_layers: int):
            return build_partial_model(spec["architecture"], spec["in_channels"], spec["num_classes"], spec["width"],
                                       freeze_layers, params.partial.frozen_bn, train.images, device, params.seed)

        started = time.perf_counter()  # the depth choice counts: it is part of the stage's cost
        model, freeze_layers, choice = resolve_freeze_layers(params.freeze_layers, partial_model, train,
                                                             spec["num_classes"], num_blocks(params.model.name),
                                                             device, params.seed)
        if choice:  # auto: the depth whose frozen features describe content best (defenses/depth.py)
            print(f"freeze_layers auto: {freeze_layers} (median label agreement by depth "
                  f"{choice['median_label_agreement']}, ties within {choice['tie_tolerance']:.4f})", file=sys.stderr)
        frozen = model.block_names[: freeze_layers]
        print(f"partial training: frozen blocks {frozen or 'none'}, trained "
              f"{model.block_names[freeze_layers:]}", file=sys.stderr)
        config = FitConfig(**params.partial.model_dump(exclude={"frozen_bn"}))
        history = fit(model, train, config, device, params.seed + 1, on_epoch_end=epoch_logger(run),
                      description="partial")
        save_model(model, PARTIAL_MODEL, {**spec, "freeze_layers": freeze_layers, "frozen_blocks": frozen,
                                          "stage": "partial-train"})
        final = {**history[-1], "wall_seconds": time.perf_counter() - started,
                 "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                 "total_parameters": sum(p.numel() for p in model.parameters()),
                 "sample_epochs": len(history) * len(train), "freeze_layers_used": freeze_layers,
                 **{f"content_agreement_depth_{depth}": share
                    for depth, share in choice.get("median_label_agreement", {}).items()}}
        run.set_tags({"freeze_layers_used": str(freeze_layers)}, on_parent=True)
        finish(run, stage_metrics("partial-train"), final, not_per_epoch(final, history), [PARTIAL_MODEL])


if __name__ == "__main__":
    run_stage(partial_train)
