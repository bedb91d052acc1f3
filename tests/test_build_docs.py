"""build's docstring lists exactly the families it accepts."""

import re

from pyro_flows.flows import _ALIASES, FAMILIES, build


def test_build_docstring_names_every_family_and_alias():
    doc = build.__doc__
    names = set(FAMILIES) | set(_ALIASES)
    missing = [n for n in names if f'``"{n}"``' not in doc]
    assert not missing, f"build's docstring omits {missing}"
    section = doc.split("name:", 1)[1].split("input_dim:", 1)[0]
    listed = set(re.findall(r'``"(\w+)"``', section))
    assert listed == names, f"build's docstring lists unknown names {listed - names}"
    no_inverse = [k for k, f in FAMILIES.items() if not f.invertible]
    clause = section.split("no inverse")[0].rsplit(";", 1)[1]
    assert all(f'``"{k}"``' in clause for k in no_inverse)
