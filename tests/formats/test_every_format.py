"""What every registered format declares holds for each of its layouts, so consumers can ask the format."""

from __future__ import annotations

import pytest

from mpq_serving.formats import QuantSpec, format_names, get_format, register_format
from mpq_serving.formats.passthrough import BF16

SPECS = {  # variants that change which tensors a format stores
    "fp8": [QuantSpec("fp8", granularity=g) for g in ("tensor", "channel", "block")]
    + [QuantSpec("fp8", activation="fp8_static")],
    "ct_int4": [QuantSpec("ct_int4", symmetric=s) for s in (True, False)],
    "ct_int8": [QuantSpec("ct_int8", symmetric=s) for s in (True, False)],
}


@pytest.mark.parametrize("name", format_names())
def test_layouts_only_use_declared_tensor_names(name):
    fmt = get_format(name)
    for spec in SPECS.get(name, [QuantSpec(name)]):
        layout = fmt.layout(fmt.normalize(spec), (256, 512))
        assert set(layout) <= set(fmt.tensor_names), (name, spec.describe(), sorted(layout))


def test_a_name_or_alias_cannot_be_taken_twice():
    class Impostor(BF16):
        name = "impostor"
        aliases = ("w8a16",)  # int8's

    with pytest.raises(ValueError, match="w8a16"):
        register_format(Impostor)
    assert get_format("w8a16").name == "int8"
