"""Lead names: map whatever a source spells (``AVR``, ``aVR``, ``avr``, ``v1``) to etp's order.

Inside etp every signal is (12, n_samples) in :data:`etp.data.records.LEADS` order
(I, II, III, aVR, aVL, aVF, V1-V6). Sources name their leads differently (PTB-XL headers say
``AVR``, the CinC headers ``aVR``); :func:`canonical_order` gives the row index of each
canonical lead in a source's own order so a reader can reorder with ``signal[order]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from etp.data.records import LEADS
from etp.errors import DataError

_KEY_TO_INDEX = {lead.upper(): i for i, lead in enumerate(LEADS)}


def lead_key(name: str) -> str:
    """Case- and space-insensitive key of a lead name (``" aVR"`` -> ``"AVR"``)."""
    return "".join(str(name).split()).upper()


def canonical_lead_name(name: str) -> str | None:
    """The canonical spelling of one lead name (``"AVR"`` -> ``"aVR"``), or ``None`` if the
    name is not one of the 12 standard leads."""
    idx = _KEY_TO_INDEX.get(lead_key(name))
    return None if idx is None else LEADS[idx]


def canonical_order(names: Sequence[str], source: str = "") -> list[int]:
    """Index into ``names`` of each lead of :data:`LEADS`, in canonical order.

    Accepts any capitalisation and surrounding spaces (``AVR``/``aVR``/``avr``, ``v1``/``V1``).
    Names that are not one of the 12 standard leads (e.g. extra Frank leads) are ignored.

    Raises:
        DataError: a standard lead is missing or appears twice; the message names ``source``
            (a file or record) when given.
    """
    where = f"{source}: " if source else ""
    found: dict[int, int] = {}
    for pos, name in enumerate(names):
        idx = _KEY_TO_INDEX.get(lead_key(name))
        if idx is None:
            continue
        if idx in found:
            raise DataError(
                f"{where}lead {LEADS[idx]} appears twice in the lead names {list(names)}"
            )
        found[idx] = pos
    missing = [LEADS[i] for i in range(len(LEADS)) if i not in found]
    if missing:
        raise DataError(
            f"{where}missing standard lead(s) {missing} (lead names found: {list(names)}); "
            f"etp needs the 12 leads {list(LEADS)}"
        )
    return [found[i] for i in range(len(LEADS))]
