"""The one parameter counter (clora3d.models.utils.count_parameters, also clora3d.profile's), checked
against counts written out by hand for a small model with a head, a frozen layer and a shared weight."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch import nn

import clora3d.models
import clora3d.profile
from clora3d.models.utils import count_parameters, head_parameter_ids


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 4)  # 12 + 4 = 16, frozen below
        self.body = nn.Linear(4, 4)  # 16 + 4 = 20
        self.tied = nn.Linear(4, 4)  # shares body's weight and bias: 0 new
        self.tied.weight = self.body.weight
        self.tied.bias = self.body.bias
        self.bn = nn.BatchNorm1d(4)  # 4 + 4 = 8 parameters, 4 + 4 + 1 buffers not counted
        self.cls_head = nn.Linear(4, 2)  # 8 + 2 = 10
        for p in self.stem.parameters():
            p.requires_grad_(False)


class _Net(_Body):
    def head_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        yield from (("cls_head." + n, p) for n, p in self.cls_head.named_parameters())


class _PrefixNet(_Body):  # no head_parameters(): the head is named by module prefixes
    HEAD_PREFIXES = ("cls_head.", "bn.")


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 16 + 20 + 8 + 10),
        ({"trainable_only": True}, 20 + 8 + 10),
        ({"exclude_head": True}, 16 + 20 + 8),
        ({"trainable_only": True, "exclude_head": True}, 20 + 8),
    ],
)
def test_hand_counted(kwargs, expected):
    assert count_parameters(_Net(), **kwargs) == expected


def test_head_from_prefixes_when_the_model_has_no_head_parameters():
    net = _PrefixNet()
    assert len(head_parameter_ids(net)) == 4  # bn.weight, bn.bias, cls_head.weight, cls_head.bias
    assert count_parameters(net, exclude_head=True) == 16 + 20
    assert head_parameter_ids(nn.Linear(2, 2)) == set()  # no head declared: nothing excluded
    assert count_parameters(nn.Linear(2, 2), exclude_head=True) == 6


def test_one_function_keyword_only():
    assert clora3d.profile.count_parameters is count_parameters is clora3d.models.count_parameters
    with pytest.raises(TypeError):
        count_parameters(_Net(), True)  # type: ignore[misc]
