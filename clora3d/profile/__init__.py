"""Parameter, FLOP/MAC and grouping-cost accounting (see :mod:`clora3d.profile.flops` for units)."""

from clora3d.models.utils import count_parameters
from clora3d.profile.flops import count_flops, grouping_cost, parameter_report, thop_macs

__all__ = ["count_flops", "count_parameters", "grouping_cost", "parameter_report", "thop_macs"]
