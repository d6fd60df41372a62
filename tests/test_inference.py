import torch
from torch import nn

import featx
from featx.models.frozen import FrozenForward, fold_batchnorm

from conftest import TINY


def _trained_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """Non-trivial running statistics, as a trained checkpoint has."""
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


def test_folding_removes_batchnorm_and_keeps_the_outputs():
    bb = featx.create_backbone(TINY, "random")
    for m in bb.model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _trained_bn(m)
    folded, count, problem = fold_batchnorm(bb.model, bb.data_config["input_size"])
    assert count > 0 and problem is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in bb.model.modules())  # the original is untouched
    x = torch.randn(3, *bb.data_config["input_size"], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), bb.model(x), rtol=1e-4, atol=1e-5)


class ConvUsedTwice(nn.Module):
    """Two conv -> bn pairs; the second conv's output is also used unnormalised: folding it would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), _trained_bn(nn.BatchNorm2d(4))
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3), _trained_bn(nn.BatchNorm2d(4))

    def forward(self, x):
        y = self.conv2(self.bn1(self.conv1(x)))
        return (self.bn2(y) + y).mean(dim=(2, 3))


def test_folding_that_would_change_outputs_is_refused_and_said_once():
    model = ConvUsedTwice().eval()
    kept, count, problem = fold_batchnorm(model, (3, 16, 16))
    assert kept is model and count == 0
    assert "folding bn2 into the convolution before it changes the outputs by" in problem
    lines = []
    forward = FrozenForward(model, {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3},
                                  torch.device("cpu"), log=lines.append)
    assert lines == [problem]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in forward.model.modules()) == 2
