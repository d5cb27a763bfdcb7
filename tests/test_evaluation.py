import numpy as np
import torch

from clipfed.attacks import create_attack
from clipfed.config import RunConfig
from clipfed.data import ImageSet
from clipfed.evaluation import BackdoorEvaluator, eval_subset
from clipfed.models import ClassifierNet
from clipfed.training import to_tensor


class ConstantNet(ClassifierNet):
    """Predicts one class for every input."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.feature_dim = 1
        self.head = torch.nn.Linear(1, 10)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), 10).float())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(x), 1)


class PatchDetector(ClassifierNet):
    """Predicts the target where a bottom-right pixel is the trigger's white square, else class 0."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.feature_dim = 1
        self.head = torch.nn.Linear(1, 10)
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marker = x[:, 0, -2, -2]  # a pixel inside the 4x4 bottom-right patch
        out = torch.zeros(len(x), 10)
        out[:, self.target] = (marker > 1.5).float()  # checkerboard white pixel, normalised
        return out + 0.5 * torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10)


def test_asr_counts_only_non_target_images() -> None:
    labels = np.arange(100) % 10
    test = ImageSet(np.zeros((100, 32, 32, 3), dtype=np.uint8), labels, tuple("abcdefghij"))
    evaluator = BackdoorEvaluator(test, create_attack(RunConfig.from_flower({"target-label": 3})))
    assert evaluator.triggered_x is not None and len(evaluator.triggered_x) == 90

    always_target = evaluator(ConstantNet(3))
    assert always_target.asr == 1.0
    assert always_target.ma == 0.1
    assert always_target.per_class_acc == [0.0, 0.0, 0.0, 1.0] + [0.0] * 6

    never_target = evaluator(ConstantNet(0))
    assert never_target.asr == 0.0 and never_target.ma == 0.1


def test_asr_detects_a_trigger_following_model() -> None:
    labels = np.arange(50) % 10
    test = ImageSet(np.zeros((50, 32, 32, 3), dtype=np.uint8), labels, tuple("abcdefghij"))
    evaluator = BackdoorEvaluator(test, create_attack(RunConfig.from_flower({"target-label": 7})))
    result = evaluator(PatchDetector(7))
    assert result.asr == 1.0  # every triggered non-target image goes to 7
    assert result.ma == 0.1  # clean images all predicted 0


def test_without_attack_asr_is_none() -> None:
    labels = np.arange(20) % 10
    test = ImageSet(np.zeros((20, 32, 32, 3), dtype=np.uint8), labels, tuple("abcdefghij"))
    assert BackdoorEvaluator(test, None)(ConstantNet(0)).asr is None


def test_to_tensor_normalises_channels_first() -> None:
    x = to_tensor(np.full((2, 32, 32, 3), 255, dtype=np.uint8))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0, 0, 0], torch.tensor((1 - 0.4914) / 0.2470))


def test_eval_subset_is_fixed_and_class_balanced() -> None:
    labels = np.repeat(np.arange(10), 30)
    images = np.arange(300, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), dtype=np.uint8)
    test = ImageSet(images, labels, tuple("abcdefghij"))
    subset = eval_subset(test, 50)
    assert np.bincount(subset.labels, minlength=10).tolist() == [5] * 10
    again = eval_subset(test, 50)
    assert np.array_equal(subset.images, again.images), "the same images for every run"
    assert eval_subset(test, 0) is test and eval_subset(test, 10_000) is test
