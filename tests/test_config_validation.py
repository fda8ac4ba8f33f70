"""A Config that exists is valid (validation runs on construction and on replace), every field is documented,
and each name list in the config comes from its one table."""
from __future__ import annotations

import typing

import pytest

from flowdppo import config, sde
from flowdppo.config import Config, describe_fields
from flowdppo.errors import ConfigError
from flowdppo.losses import POLICY_LOSSES


@pytest.mark.parametrize("field,value", [("num_minibatches", 0), ("threads", 0), ("eval_every", -1), ("eval_from", -1),
                                         ("conventions", "unknown")])
def test_construction_and_replace_validate(field, value):
    with pytest.raises(ConfigError, match=f"config.{field}"):
        Config(**{field: value})
    with pytest.raises(ConfigError, match=f"config.{field}"):
        Config().replace(**{field: value})


def test_every_field_has_a_docstring():
    undocumented = [line.split(" = ")[0] for line in describe_fields().splitlines() if line.rstrip().endswith("—")]
    assert not undocumented, f"fields without a docstring: {undocumented}"


def test_loss_names_are_the_loss_table():
    assert set(typing.get_args(config.LossName)) == set(POLICY_LOSSES)


def test_kernel_names_are_the_sampler_table():
    assert tuple(typing.get_args(config.KernelName)) == sde.SDE_KERNELS
    assert tuple(typing.get_args(sde.Kernel)) == sde.KERNELS
