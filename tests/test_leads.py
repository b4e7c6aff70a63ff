"""Lead-name normalisation (etp.data.leads) on the spellings real sources use."""

from __future__ import annotations

import pytest
import wfdb

from etp.data.leads import canonical_lead_name, canonical_order, lead_key
from etp.data.records import LEADS
from etp.errors import DataError


def test_ptbxl_header_names_map_to_identity(sample_dir):
    # PTB-XL spells the augmented leads AVR/AVL/AVF
    hea = next((sample_dir / "ptb-xl" / "records100" / "00000").glob("*.hea"))
    names = wfdb.rdheader(str(hea.with_suffix(""))).sig_name
    assert "AVR" in names
    assert canonical_order(names) == list(range(12))


def test_cinc_header_names_map_to_identity(sample_dir):
    names = wfdb.rdheader(str(sample_dir / "cpsc2018" / "wfdb" / "A0002")).sig_name
    assert "aVR" in names
    assert canonical_order(names) == list(range(12))


def test_shuffled_and_oddly_spelled_names():
    names = ["v6", " avr", "I", "V1", "AVL", "ii", "avF", "III", "v2", "V3", "v4", "V5"]
    order = canonical_order(names)
    assert [lead_key(names[i]) for i in order] == [lead.upper() for lead in LEADS]
    assert names[order[3]] == " avr"


def test_extra_leads_are_ignored():
    names = ["vx", "vy", *LEADS, "vz"]
    assert canonical_order(names) == list(range(2, 14))


def test_canonical_lead_name():
    assert canonical_lead_name("AVR") == "aVR"
    assert canonical_lead_name("v5") == "V5"
    assert canonical_lead_name("MLII") is None


def test_missing_lead_is_named():
    with pytest.raises(DataError, match=r"rec\.hea: missing standard lead\(s\) \['V6'\]"):
        canonical_order(list(LEADS[:11]), source="rec.hea")


def test_duplicate_lead_is_named():
    names = [*LEADS[:11], "v5"]
    with pytest.raises(DataError, match="lead V5 appears twice"):
        canonical_order(names)
