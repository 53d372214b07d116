"""JMESPath functions of our own, registered once; every Expr searches with OPTIONS."""

from __future__ import annotations

import jmespath
from jmespath import functions as jp


class EtlFunctions(jp.Functions):
    """Placeholder set; the mapping issue fills it in."""


OPTIONS = jmespath.Options(custom_functions=EtlFunctions())
