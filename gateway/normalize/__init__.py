"""Pure decoding: JSON field paths, register codecs, value types, units and quality. No I/O."""
