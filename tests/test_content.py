"""The frozen prefix's view of content (defenses/content.py), on hand-made data and a real model."""

from __future__ import annotations

import torch

from ptdefense.defenses.content import content_features, content_view, easy_disagreement, neighbour_votes
from ptdefense.models.registry import build_model


def _clusters(count_per_class: int = 40, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors in tight clusters, one per class, far apart."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(8)[:classes] * 5
    labels = torch.arange(classes).repeat_interleave(count_per_class)
    points = centres[labels] + 0.3 * torch.randn(labels.numel(), 8, generator=generator)
    return torch.nn.functional.normalize(points, dim=1), labels


def test_neighbour_votes_read_the_labels_of_the_nearest_points_not_the_points_own():
    features, labels = _clusters()
    votes = neighbour_votes(features, labels, 3, neighbours=5)
    assert votes.shape == (120, 3)
    assert torch.allclose(votes.sum(1), torch.ones(120))
    assert torch.equal(votes.argmax(1), labels)  # clean clusters: every neighbour agrees
    relabelled = labels.clone()
    relabelled[0] = 2  # one point of cluster 0 carries label 2: its neighbours still say 0
    votes = neighbour_votes(features, relabelled, 3, neighbours=5)
    assert votes[0].tolist() == [1.0, 0.0, 0.0]  # its own label does not vote for itself
    assert float(votes[1:40, 2].max()) <= 0.2 + 1e-6  # and it sways its neighbours by at most one vote in five


def test_easy_disagreement_picks_mislabelled_samples_that_the_model_fits_easily():
    features, labels = _clusters(count_per_class=50)
    poisoned = labels.clone()
    poison = torch.tensor([0, 1, 2, 3, 50, 51, 52, 53])  # content 0 and 1, relabelled to 2
    ambiguous = torch.tensor([100, 101])  # content 2 that the model finds hard
    poisoned[poison] = 2
    votes = neighbour_votes(features, poisoned, 3, neighbours=7)
    votes[ambiguous] = torch.tensor([0.6, 0.0, 0.4])  # natural ambiguities: content points to 0
    losses = torch.full((150,), 0.05)
    losses[poison] = 0.01  # the trigger makes poison easy
    losses[ambiguous] = 2.0  # ambiguity makes clean samples hard
    easy, shares = easy_disagreement(votes, losses, poisoned, 3)
    assert torch.nonzero(easy).flatten().tolist() == poison.tolist()
    members_of_2 = int((poisoned == 2).sum())  # 50 + 8
    assert shares["content_disagreement"]["2"] == 10 / members_of_2
    assert shares["easy_disagreement"]["2"] == 8 / members_of_2
    assert shares["content_disagreement"]["0"] == 0.0


def test_content_features_come_from_the_frozen_prefix_only():
    torch.manual_seed(0)
    model = build_model("resnet_small", 1, 10, 8)
    images = torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8)
    features = content_features(model, images, 2, torch.device("cpu"))
    assert features.shape == (96, 64)  # 2 blocks: 16 channels × 4 × 4 = 256, projected on 64 components
    assert torch.allclose(features.norm(dim=1), torch.ones(96), atol=1e-5)
    # The trained blocks (after the prefix) do not enter: changing them changes nothing.
    with torch.no_grad():
        for parameter in model.blocks["head"].parameters():
            parameter.add_(1.0)
    assert torch.allclose(content_features(model, images, 2, torch.device("cpu")), features, atol=1e-5)
    # Nothing frozen: the pooled pixels stand in (1 channel × 4 × 4).
    assert content_features(model, images, 0, torch.device("cpu")).shape == (96, 16)


def test_content_view_ignores_an_images_brightness_and_contrast():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(40, 200, (8, 3, 16, 16), generator=generator, dtype=torch.uint8)
    rescaled = (images.float() * 0.6 + 70).round().to(torch.uint8)  # dimmer, less contrast, brighter floor
    view, rescaled_view = content_view(images).int(), content_view(rescaled).int()
    assert view.dtype == torch.int32 and view.shape == images.shape
    assert int((view - rescaled_view).abs().max()) <= 2  # rounding only
    assert float(view.float().std()) < float(images.float().std())  # the blur removes pixel-scale detail


def _shapes(per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """28×28 grey images of three shapes (a bar across, a bar down, a square outline), each shifted at
    random by up to 4 pixels, with mild pixel noise."""
    canvas = torch.zeros(3, 28, 28)
    canvas[0, 12:16, 4:24] = 1
    canvas[1, 4:24, 12:16] = 1
    canvas[2, 6:22, 6:22] = 1
    canvas[2, 9:19, 9:19] = 0
    labels = torch.arange(3).repeat_interleave(per_class)
    shifts = torch.randint(-4, 5, (labels.numel(), 2), generator=generator)
    images = torch.stack([torch.roll(canvas[label], tuple(shift.tolist()), (0, 1))
                          for label, shift in zip(labels.tolist(), shifts)])
    images = images * 200 + 20 + 15 * torch.rand(images.shape, generator=generator)
    return images.clamp(0, 255).round().to(torch.uint8).unsqueeze(1), labels


def test_blended_poison_disagrees_with_its_label_in_the_frozen_prefix_view():
    """Blend: one noise pattern mixed in at 20% opacity into a quarter of shapes 1 and 2, relabelled to 0.
    The frozen prefix, shown the content view, still sees bars down and squares: their neighbours vote
    for their true shapes, while clean samples keep agreeing with their labels."""
    from ptdefense.defenses.pt import build_partial_model

    generator = torch.Generator().manual_seed(0)
    images, labels = _shapes(80, generator)
    pattern = torch.randint(0, 256, (1, 28, 28), generator=generator).float()
    poison = torch.cat([torch.arange(80, 100), torch.arange(160, 180)])
    images[poison] = (0.8 * images[poison].float() + 0.2 * pattern).round().to(torch.uint8)
    poisoned_labels = labels.clone()
    poisoned_labels[poison] = 0
    model = build_partial_model("resnet_small", 1, 3, 8, 3, "recalibrate", images, torch.device("cpu"), 0)
    votes = neighbour_votes(content_features(model, images, 3, torch.device("cpu")), poisoned_labels, 3)
    disagrees = votes.argmax(1) != poisoned_labels
    clean = torch.ones(labels.numel(), dtype=torch.bool)
    clean[poison] = False
    assert float(disagrees[poison].float().mean()) >= 0.8
    assert float((votes.argmax(1)[poison] == labels[poison]).float().mean()) >= 0.8  # to their true shape
    assert float(disagrees[clean].float().mean()) <= 0.1
