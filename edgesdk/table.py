"""Plain-text tables for CLI results, and text from bundles made safe to print (stdlib, runs
on the device too)."""
import unicodedata


def printable(text):
    """``text`` with every control or format character escaped (``\\x1b``, ``\\u202e``):
    strings from a bundle or a store must not move the cursor, erase lines, start new lines
    or reverse the text around them when printed (an ANSI escape in a manifest string hid
    lines and spoofed the printed ``manifest_sha256``)."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append("\\x{:02x}".format(code) if code < 0x100 else
                       "\\u{:04x}".format(code) if code < 0x10000 else "\\U{:08x}".format(code))
        else:
            out.append(ch)
    return "".join(out)


def printable_copy(value):
    """A copy of a JSON value (a manifest) with :func:`printable` applied to every string,
    keys included."""
    if isinstance(value, dict):
        return dict((printable(k), printable_copy(v)) for k, v in value.items())
    if isinstance(value, list):
        return [printable_copy(v) for v in value]
    return printable(value) if isinstance(value, str) else value


def format_table(headers, rows):
    """Left-aligned columns separated by two spaces, with a rule under the header; every cell
    through :func:`printable`."""
    cells = [[printable(h) for h in headers]] + [["" if c is None else printable(c) for c in r]
                                                for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
