"""Finding the dataset and reading styles.csv (the Kaggle "Fashion Product Images" layout).

styles.csv is not valid CSV: 22 rows carry commas inside productDisplayName, unquoted, so they
have 11 or 12 fields. The first nine fields are always the structured columns, so each line is
split on its first nine commas and the remainder is the display name. The literal "NA" (mostly in
`usage`) is a value and is kept as the string "NA"; only an empty field is missing.
"""

import dataclasses

import pandas as pd

from fashion_jax import errors

STYLE_COLUMNS = (
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
)


@dataclasses.dataclass
class StylesTable:
    """Parsed styles.csv: one row per product, plus the lines that could not be used."""

    rows: pd.DataFrame  # columns STYLE_COLUMNS; id int64, others str (missing: NaN)
    skipped: list  # (line number, id or None, reason)
    extra_comma_rows: int  # rows whose display name held commas (kept)


def read_styles(csv_path: str) -> StylesTable:
    """Parses styles.csv, keeping 11/12-field rows and reporting every line it cannot use."""
    records, skipped, extra_comma_rows, seen_ids = [], [], 0, set()
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        header = f.readline().rstrip("\r\n").split(",")
        if [h.strip() for h in header[: len(STYLE_COLUMNS)]] != list(STYLE_COLUMNS):
            raise errors.DataError(
                f"{csv_path}: line 1 is not the expected header. Expected "
                f"{','.join(STYLE_COLUMNS)}; found {','.join(header)}."
            )
        for line_number, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(",", len(STYLE_COLUMNS) - 1)
            if len(fields) < len(STYLE_COLUMNS):
                skipped.append(
                    (
                        line_number,
                        None,
                        f"{len(fields)} fields, expected at least {len(STYLE_COLUMNS)}",
                    )
                )
                continue
            if "," in fields[-1]:
                extra_comma_rows += 1
            try:
                style_id = int(fields[0])
            except ValueError:
                skipped.append((line_number, None, f"id {fields[0]!r} is not an integer"))
                continue
            if style_id in seen_ids:
                skipped.append((line_number, style_id, "duplicate id (first row kept)"))
                continue
            seen_ids.add(style_id)
            values = [value if value != "" else None for value in fields[1:]]
            records.append([style_id] + values)
    rows = pd.DataFrame(records, columns=list(STYLE_COLUMNS)).astype(
        {"id": "int64"} | {c: "object" for c in STYLE_COLUMNS[1:]}
    )
    return StylesTable(rows=rows, skipped=skipped, extra_comma_rows=extra_comma_rows)
