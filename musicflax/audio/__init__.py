"""Notes <-> piano-roll <-> pretty_midi, the additive synthesizer, and plots."""
