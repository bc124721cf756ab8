"""Markdown for the reports (report.md, heads.md): tables and number formats."""


def table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def pct(value, sign: str = "%") -> str:
    """0.98765 -> "98.77%" ("-" for None or NaN)."""
    return "-" if value is None or value != value else f"{100 * value:.2f}{sign}"


def pct_interval(value, interval) -> str:
    """98.77% [98.40, 99.06] (the interval in percent, without signs)."""
    if not interval:
        return pct(value)
    return f"{pct(value)} [{pct(interval[0], '')}, {pct(interval[1], '')}]"


def num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def num_interval(value, interval, spec: str = ".3f") -> str:
    if not interval:
        return num(value, spec)
    return f"{num(value, spec)} [{format(interval[0], spec)}, {format(interval[1], spec)}]"


def or_dash(value):
    return "-" if value is None else value
