"""styles.csv parsing and dataset discovery."""

import pandas as pd
import pytest

from fashion_jax import errors
from fashion_jax.data import styles
from tests.conftest import HEADER


def write(tmp_path, text):
    path = tmp_path / "styles.csv"
    path.write_text(text)
    return path


def test_rows_with_commas_in_display_name_are_kept_whole(tmp_path):
    path = write(
        tmp_path,
        HEADER + "\n"
        "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Plain Shirt\n"
        "2,Men,Personal Care,Fragrance,Perfume,Blue,Spring,2017,Casual,Boss Perfume, Balm\n"
        "3,Men,Accessories,Acc,Set,Pink,Fall,2011,Formal,Tie, Cufflink, Square Set\n",
    )
    table = styles.read_styles(path)
    assert table.rows["id"].tolist() == [1, 2, 3]
    assert table.rows["productDisplayName"].tolist() == [
        "Plain Shirt",
        "Boss Perfume, Balm",
        "Tie, Cufflink, Square Set",
    ]
    assert table.rows["masterCategory"].tolist() == ["Apparel", "Personal Care", "Accessories"]
    assert table.extra_comma_rows == 2
    assert table.skipped == []


def test_na_is_a_value_and_empty_is_missing(tmp_path):
    path = write(
        tmp_path,
        HEADER + "\n"
        "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,NA,Shirt\n"
        "2,Men,Apparel,Topwear,Shirts,,Fall,,Casual,Shirt\r\n",
    )
    rows = styles.read_styles(path).rows
    assert rows.loc[0, "usage"] == "NA"
    assert pd.isna(rows.loc[1, "baseColour"]) and pd.isna(rows.loc[1, "year"])
    assert rows.loc[1, "productDisplayName"] == "Shirt"


def test_bad_lines_are_reported_with_line_numbers(tmp_path):
    path = write(
        tmp_path,
        HEADER + "\n"
        "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Shirt\n"
        "2,Men,Apparel,Topwear\n"
        "x3,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Shirt\n"
        "1,Women,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Again\n"
        "\n",
    )
    table = styles.read_styles(path)
    assert table.rows["id"].tolist() == [1]
    assert table.rows.loc[0, "gender"] == "Men"
    assert [(line, i) for line, i, _ in table.skipped] == [(3, None), (4, None), (5, 1)]
    assert "expected at least 10" in table.skipped[0][2]
    assert "not an integer" in table.skipped[1][2]
    assert "duplicate" in table.skipped[2][2]


def test_wrong_header_names_the_file(tmp_path):
    path = write(tmp_path, "id,name,label\n1,a,b\n")
    with pytest.raises(errors.DataError, match="styles.csv: line 1 is not the expected header"):
        styles.read_styles(path)
