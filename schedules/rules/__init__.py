"""CPU schedule rules in dlight's shape: `rule.apply(func, target, tunable) -> Schedule | None`.

`default_rules()` is the order `ApplyCPUSchedules` tries them in: the most specific first, the first rule that
returns a schedule wins.
"""

from .common import CPURule
from .conv2d import Conv2d
from .depthwise_conv2d import DepthwiseConv2d
from .elementwise import Elementwise
from .matmul import Matmul
from .padding import Padding
from .pointwise_conv2d import PointwiseConv2d
from .reduction import Reduction
from .winograd import Winograd


def default_rules() -> tuple[CPURule, ...]:
    return (Winograd(), Matmul(), PointwiseConv2d(), Conv2d(), DepthwiseConv2d(), Reduction(), Padding(),
            Elementwise())


__all__ = ["CPURule", "Conv2d", "DepthwiseConv2d", "Elementwise", "Matmul", "Padding", "PointwiseConv2d", "Reduction",
           "Winograd", "default_rules"]
