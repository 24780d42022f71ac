"""Rating files in, id index and splits out (docs/model.md §1, §11): every
name of the modules that read data, in one place.

- parsing.py: the rule of numbers and ids as written, the ratings glocalk-np
  trains on, DataError and DataWarning;
- ids.py: ids as the library holds them (as_ids) and the Index of a matrix;
- ratings.py: Ratings, from files or a table's columns, joined and subset;
- textfiles.py: ratings, pairs and ids read from delimited text, and written;
- matfile.py: Monti et al.'s .mat files, and read_any for either kind;
- splits.py: random and ML-1M splits.
"""
from .ids import Index, _positions, as_ids, bad_text_id, ids_in_kind
from .matfile import BYTES_PER_RATING, MAX_MAT_ENTRIES, read_any, read_monti_mat
from .parsing import (ASCII_BLANKS, DECIMAL, MAX_RATING, MAX_RATING_CHARS, MIN_RATING,
                      PLAIN_INT, DataError, DataWarning, first_bad_rating, parse_decimal,
                      rating_problem)
from .ratings import COLUMN_ALIASES, Ratings, concatenate, subset, table_columns
from .splits import ml1m_split, random_split
from .textfiles import TEXT_BYTES_PER_BYTE, ratings_csv, read_ids, read_pairs, read_ratings

__all__ = ["ASCII_BLANKS", "BYTES_PER_RATING", "COLUMN_ALIASES", "DECIMAL", "DataError",
           "DataWarning", "Index", "MAX_MAT_ENTRIES", "MAX_RATING", "MAX_RATING_CHARS",
           "MIN_RATING", "PLAIN_INT", "Ratings", "TEXT_BYTES_PER_BYTE", "_positions", "as_ids",
           "bad_text_id", "concatenate", "first_bad_rating", "ids_in_kind", "ml1m_split",
           "parse_decimal", "random_split", "rating_problem", "ratings_csv", "read_any",
           "read_ids", "read_monti_mat", "read_pairs", "read_ratings", "subset",
           "table_columns"]
