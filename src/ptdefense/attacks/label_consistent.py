"""Label-consistent backdoor (Turner et al., 2019): clean-label, on purposely hard images.

Target-class images are first pushed away from their own class by a PGD perturbation (L∞ ≤ ε)
computed against a surrogate model trained on the clean data, then triggered with a corner patch.
Their labels stay correct, but their content no longer explains the label, so the model learns
the trigger instead. As in Turner et al., the trigger is a small black-and-white checkerboard in
each of the four corners (a single corner patch was measured at 3% attack success rate here); the
test-time trigger is the checkerboards alone.
"""

from __future__ import annotations

import torch

from ptdefense.attacks.base import Attack, check_size, register_attack
from ptdefense.attacks.settings import LabelConsistentSettings


@register_attack
class LabelConsistent(Attack):
    name = "label_consistent"
    clean_label = True
    Settings = LabelConsistentSettings

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        size = self.settings.patch_size
        check_size(images, 2 * size, "label_consistent patch_size × 2")
        rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        board = (((rows + columns) % 2 == 0).to(torch.uint8) * 255)
        triggered = images.clone()
        # Mirrored into each corner, so that every corner shows the same pattern seen from outside.
        triggered[..., :size, :size] = board
        triggered[..., :size, -size:] = board.flip(1)
        triggered[..., -size:, :size] = board.flip(0)
        triggered[..., -size:, -size:] = board.flip(0).flip(1)
        return triggered

    def train_surrogate(self, train, device: torch.device) -> torch.nn.Module:
        from ptdefense.models.registry import build_model
        from ptdefense.training import FitConfig, fit

        torch.manual_seed(self.seed + 7)
        model = build_model(self.settings.surrogate_model, train.images.shape[1], self.num_classes)
        config = FitConfig(epochs=self.settings.surrogate_epochs, batch_size=128, lr=0.05)
        fit(model, train, config, device, self.seed + 7, description="label-consistent surrogate")
        return model.eval()

    def poison_images(self, train, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        # The surrogate sees the whole clean training set, as the attacker's own clean model would.
        surrogate = self.train_surrogate(train, device)
        hard = adversarial_perturbation(surrogate, train.images[indices], train.labels[indices], self.settings.epsilon,
                                        self.settings.pgd_steps, self.settings.step_size, device)
        return self.apply_trigger(hard)


def adversarial_perturbation(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float,
                             steps: int, step_size: float, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """Untargeted L∞ PGD on uint8 images (pixel units), from the clean image; returns uint8."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.to(device).eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        original = images[start:start + batch_size].to(device).float()
        target = labels[start:start + batch_size].to(device)
        perturbed = original.clone()
        for _ in range(steps):
            perturbed.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(perturbed / 127.5 - 1.0), target)
            (gradient,) = torch.autograd.grad(loss, perturbed)
            with torch.no_grad():
                perturbed = perturbed + step_size * gradient.sign()
                perturbed = (original + (perturbed - original).clamp(-epsilon, epsilon)).clamp(0, 255)
        outputs.append(perturbed.detach().round().clamp(0, 255).to(torch.uint8).cpu())
    return torch.cat(outputs) if outputs else images.clone()
