"""Study parts, one file each; importing this package registers them all, in the order below
(the order of planning and of the report). The contract: `base`."""

from mattransfer.study.parts import part1, part2, part3, part4  # noqa: F401  (registration, in this order)
from mattransfer.study.parts import dft_to_expt  # noqa: F401
from mattransfer.study.parts.base import PARTS, Methods, Part, Section, Sizes, register_part

__all__ = ["PARTS", "Methods", "Part", "Section", "Sizes", "register_part"]
