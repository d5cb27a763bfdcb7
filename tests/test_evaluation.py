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


def _labelled_images(labels: np.ndarray) -> ImageSet:
    """Images whose every pixel is 20 * label, so that a model can read the true class off them."""
    images = (np.asarray(labels, dtype=np.uint8) * 20)[:, None, None, None] * np.ones((1, 32, 32, 3), dtype=np.uint8)
    return ImageSet(images, labels, tuple("abcdefghij"))


class FlipNet(ClassifierNet):
    """Right on every class except ``source``, whose images it classifies as ``target``."""

    def __init__(self, source: int, target: int) -> None:
        super().__init__()
        self.feature_dim = 1
        self.head = torch.nn.Linear(1, 10)
        self.source, self.target = source, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixel = (x[:, 0, 0, 0] * 0.2470 + 0.4914) * 255
        label = torch.round(pixel / 20).long()
        label[label == self.source] = self.target
        return torch.nn.functional.one_hot(label, 10).float()


class NaNLogitsNet(ConstantNet):
    """Finite parameters, NaN features: the logits are NaN although no weight is."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 1), float("nan"))


def test_a_nan_model_is_diverged_not_a_perfect_backdoor() -> None:
    labels = np.arange(100) % 10
    test = ImageSet(np.zeros((100, 32, 32, 3), dtype=np.uint8), labels, tuple("abcdefghij"))
    evaluator = BackdoorEvaluator(test, create_attack(RunConfig.from_flower({"target-label": 0})))
    model = ConstantNet(3)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))  # argmax of NaN logits is 0, the target
    result = evaluator(model)
    assert result.diverged and result.ma is None and result.asr is None
    assert result.per_class_acc == [None] * 10
    assert "non-finite parameters" in result.unavailable["asr"]

    logits_nan = evaluator(NaNLogitsNet(3))
    assert logits_nan.diverged and logits_nan.ma is None and logits_nan.asr is None
    assert "non-finite logits" in logits_nan.unavailable["ma"]
    assert not evaluator(ConstantNet(3)).diverged


def test_label_flip_asr_counts_the_source_class_only() -> None:
    labels = np.arange(100) % 10
    flip = {"attack": "labelflip", "flip-source": 3, "target-label": 0}
    result = BackdoorEvaluator(_labelled_images(labels), create_attack(RunConfig.from_flower(flip)))(FlipNet(3, 0))
    assert result.asr == 1.0  # every class-3 image goes to 0; the old rule diluted it to 10/90
    assert result.ma == 0.9

    every_class = {**flip, "flip-source": -1}  # no source: every non-target class counts
    diluted = BackdoorEvaluator(_labelled_images(labels), create_attack(RunConfig.from_flower(every_class)))
    assert diluted(FlipNet(3, 0)).asr == 10 / 90


def test_an_empty_asr_set_gives_no_asr_and_says_why() -> None:
    labels = np.arange(100) % 10
    # RunConfig refuses flip-source == target-label; the evaluator still must not invent a number
    source_is_target = RunConfig().model_copy(update={"attack": "labelflip", "flip_source": 0, "target_label": 0})
    evaluator = BackdoorEvaluator(_labelled_images(labels), create_attack(source_is_target))
    result = evaluator(FlipNet(3, 0))
    assert result.asr is None and "no test image counts for ASR" in result.unavailable["asr"]
    assert result.ma == 0.9 and not result.diverged

    only_target = ImageSet(np.zeros((5, 32, 32, 3), dtype=np.uint8), np.full(5, 7), tuple("abcdefghij"))
    badnets = BackdoorEvaluator(only_target, create_attack(RunConfig.from_flower({"target-label": 7})))
    assert badnets(ConstantNet(7)).asr is None


def test_a_class_without_test_images_has_no_accuracy() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    result = BackdoorEvaluator(_labelled_images(labels), None)(FlipNet(-1, 0))
    assert result.per_class_acc[:3] == [1.0, 1.0, 1.0] and result.per_class_acc[3:] == [None] * 7
    assert "[3, 4, 5, 6, 7, 8, 9]" in result.unavailable["per_class_acc"]
    assert result.unavailable["asr"] == "no attack"


def test_racc_is_the_true_label_accuracy_on_the_images_asr_counts() -> None:
    """R-Acc tells a model that ignores the trigger (R-Acc = its accuracy) from one the trigger
    merely confuses: both have ASR 0."""
    labels = np.arange(100) % 10
    evaluator = BackdoorEvaluator(_labelled_images(labels), create_attack(RunConfig.from_flower({"target-label": 0})))
    assert evaluator.triggered_y is not None and (evaluator.triggered_y != 0).all() and len(evaluator.triggered_y) == 90
    ignores = evaluator(FlipNet(-1, 0))  # reads the true class off the (untouched) top-left pixel
    assert ignores.asr == 0.0 and ignores.racc == 1.0
    confused = evaluator(ConstantNet(5))  # never the target, and right only on class 5
    assert confused.asr == 0.0 and confused.racc == 10 / 90
    backdoored = evaluator(ConstantNet(0))
    assert backdoored.asr == 1.0 and backdoored.racc == 0.0

    flip = {"attack": "labelflip", "flip-source": 3, "target-label": 0}  # the source class, no trigger
    flipped = BackdoorEvaluator(_labelled_images(labels), create_attack(RunConfig.from_flower(flip)))
    assert flipped(FlipNet(3, 0)).racc == 0.0 and flipped(FlipNet(-1, 0)).racc == 1.0


def test_racc_is_null_with_its_reason_exactly_where_asr_is() -> None:
    labels = np.arange(20) % 10
    no_attack = BackdoorEvaluator(_labelled_images(labels), None)(FlipNet(-1, 0))
    assert no_attack.racc is None and no_attack.unavailable["racc"] == "no attack"
    evaluator = BackdoorEvaluator(_labelled_images(labels), create_attack(RunConfig.from_flower({"target-label": 0})))
    diverged = evaluator(NaNLogitsNet(3))
    assert diverged.racc is None and "non-finite logits" in diverged.unavailable["racc"]
