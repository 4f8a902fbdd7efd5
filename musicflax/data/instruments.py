"""Instrument groups: which instrument codes (1-based General MIDI programs, as in
MusicNet's labels) share a block of 128 pitch channels of a piano-roll. Plain Python."""

from __future__ import annotations

import dataclasses

from musicflax.data import musicnet

NUM_PITCHES = 128
DROP_GROUP = "drop"


@dataclasses.dataclass(frozen=True)
class InstrumentGroups:
    """Named groups of instrument codes (1-based General MIDI programs, as in MusicNet's
    labels); each group is one block of 128 channels.

    Parsed from a spec like "keyboard:1,7;strings:41,42,43,44;winds:61,69,71,72,74". The first
    code of a group is the instrument used when a roll of that group is written as MIDI. A
    group named "drop" (e.g. "...;drop:46") lists codes whose notes are left out.
    """

    names: tuple[str, ...]
    codes: tuple[tuple[int, ...], ...]
    dropped: tuple[int, ...] = ()
    spec: str = ""

    @classmethod
    def parse(cls, spec: str) -> "InstrumentGroups":
        names, codes, dropped = [], [], ()
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            name, sep, code_list = part.partition(":")
            try:
                group = tuple(int(c) for c in code_list.split(",") if c.strip())
            except ValueError:
                group = ()
            if not sep or not group:
                raise musicnet.DataError(f"instrument group {part!r} must look like 'name:1,7'")
            bad = sorted(c for c in group if not 1 <= c <= 128)
            if bad:
                raise musicnet.DataError(f"instrument group {name!r} has codes {bad} that are "
                                         "not 1-based General MIDI programs (1..128)")
            if name.strip() == DROP_GROUP:
                dropped += group
            else:
                names.append(name.strip())
                codes.append(group)
        seen = [c for g in codes for c in g] + list(dropped)
        if len(seen) != len(set(seen)):
            raise musicnet.DataError(f"instrument groups {spec!r} list an instrument twice")
        if not names:
            raise musicnet.DataError(f"instrument groups {spec!r} keep no instrument")
        return cls(tuple(names), tuple(codes), tuple(dropped), spec)

    @property
    def num_channels(self) -> int:
        return NUM_PITCHES * len(self.names)

    @property
    def programs(self) -> tuple[int, ...]:
        return tuple(g[0] for g in self.codes)

    def group_of(self) -> dict[int, int]:
        return {code: i for i, group in enumerate(self.codes) for code in group}

    def unknown_code_error(self, code: int, where: str) -> musicnet.DataError:
        """The one-line error for a code no group holds, saying how to map or drop it."""
        name = musicnet.INSTRUMENTS.get(code) or _gm_name(code)
        # Suggest the group holding an instrument of the same General MIDI family of eight.
        family = [i for i, c in enumerate(self.codes) if any((x - 1) // 8 == (code - 1) // 8
                                                             for x in c)]
        i = family[0] if family else len(self.names) - 1
        example = f"{self.names[i]}:{','.join(map(str, self.codes[i] + (code,)))}"
        return musicnet.DataError(
            f"{where}: instrument {code} ({name}) is in no group of data.instrument_groups="
            f"{self.spec!r}: add it to a group (e.g. '{example}') or drop its notes with "
            f"';{DROP_GROUP}:{code}'")


def _gm_name(code: int) -> str:
    import pretty_midi  # pylint: disable=g-import-not-at-top
    return pretty_midi.program_to_instrument_name(code - 1)
