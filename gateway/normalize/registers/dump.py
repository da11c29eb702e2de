"""Register dumps, as the profile README shows them: ``firegw profiles try PROFILE dump.txt``. Pure."""

from __future__ import annotations

from gateway.errors import DecodeError
from gateway.models import URGENT_CLASSES, Reading
from gateway.normalize.registers.codec import decode_point
from gateway.normalize.registers.points import BIT_TABLES, compile_points
from gateway.profiles.models import Profile

__all__ = ["decode_dump", "parse_dump"]


def parse_dump(text: str) -> dict[str, dict[int, int]]:
    """Parse a register dump as the profile README shows it::

        holding 0..13   0041 0003 0001 ...      (hex words; a line starting with blanks continues)
        discrete 0..2   0 0 0                    (bits)

    Returns table → {documented address: word or bit}.
    """
    memory: dict[str, dict[int, int]] = {}
    table: str | None = None
    addr = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split()
        if not line[0].isspace():
            name = tokens[0]
            if name not in ("holding", "input", "coil", "discrete"):
                raise DecodeError(f"dump line {lineno}: unknown table {name!r} (holding, input, coil, discrete)")
            table = name
            try:
                addr = int(tokens[1].split("..")[0])
            except (IndexError, ValueError) as exc:
                raise DecodeError(f"dump line {lineno}: expected 'TABLE START..END words'") from exc
            tokens = tokens[2:]
        if table is None:
            raise DecodeError(f"dump line {lineno}: a continuation line before any table line")
        for tok in tokens:
            try:
                word = int(tok, 2 if table in BIT_TABLES else 16)
            except ValueError as exc:
                raise DecodeError(
                    f"dump line {lineno}: {tok!r} is not a {'bit' if table in BIT_TABLES else 'hex word'}"
                ) from exc
            memory.setdefault(table, {})[addr] = word
            addr += 1
    return memory


def decode_dump(profile: Profile, text: str, now_ms: int) -> list[Reading]:
    """Decode a register dump (see :func:`parse_dump`) with a Modbus profile: ``firegw profiles try``.

    Points whose registers are not in the dump are skipped; a value that does not decode raises
    DecodeError naming the point.
    """
    memory = parse_dump(text)
    out: list[Reading] = []
    for rp in compile_points(profile, address_base=0):
        table = memory.get(rp.table, {})
        words = [table.get(a) for a in range(rp.doc_address, rp.doc_address + rp.width)]
        if any(w is None for w in words):
            continue
        dec = decode_point(rp, [int(w) for w in words if w is not None])
        if dec.value is None:
            continue
        out.append(
            Reading(
                "",
                "",
                rp.name,
                dec.value,
                rp.point.unit,
                now_ms,
                now_ms,
                dec.quality,
                rp.point_class,
                rp.point_class in URGENT_CLASSES,
            )
        )
    return out
