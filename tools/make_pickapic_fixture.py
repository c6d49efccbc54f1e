"""Write tiny Pick-a-Pic v2-like parquet files for psotune's parquet pairs reader.

    pip install pyarrow pillow   # dev-side only; see tools/requirements.txt
    python tools/make_pickapic_fixture.py            # rewrites fixtures/pickapic/

The real dataset (yuvalkirstain/pickapic_v2, data/*.parquet) has one row per
comparison: `caption` (string), `jpg_0` / `jpg_1` (JPEG bytes), `label_0`
(1.0: image 0 preferred, 0.0: image 1, 0.5: a tie) and many columns psotune
ignores (uids, urls, user ids, `label_1`, ...). The fixtures copy that
schema with a few of the ignored columns, Snappy compression (pyarrow's
default, what the dataset uses) and two rows per row group, so the reader
crosses row-group boundaries.

- `tiny.parquet`: 5 rows at the sd21-tiny fixture's 16x16 resolution except
  row 3 (24x20, to exercise resize + centre crop); row 2 is a tie.
- `bad-jpeg.parquet`: like `tiny.parquet`, but row 1's `jpg_1` is not a JPEG.
- `no-label.parquet`: the `label_0` column is missing.

Deterministic: the same pyarrow/Pillow versions rewrite identical bytes.
"""

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "pickapic")


def jpeg(size, rgb):
    """A white square image with a coloured centre block, as JPEG bytes."""
    w, h = size
    img = Image.new("RGB", (w, h), (255, 255, 255))
    x0, y0 = w // 4, h // 4
    img.paste(rgb, (x0, y0, w - x0, h - y0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


RED, BLUE, GREEN, GREY = (220, 20, 20), (20, 20, 220), (20, 200, 20), (128, 128, 128)

# (caption, image 0, image 1, label_0)
ROWS = [
    ("an emoji of a square", jpeg((16, 16), RED), jpeg((16, 16), BLUE), 1.0),
    ("an emoji of a square", jpeg((16, 16), BLUE), jpeg((16, 16), RED), 0.0),
    ("an emoji of a circle", jpeg((16, 16), GREEN), jpeg((16, 16), GREY), 0.5),
    ("an emoji of a cat", jpeg((24, 20), RED), jpeg((24, 20), GREEN), 1.0),
    ("an emoji of a cat", jpeg((16, 16), GREY), jpeg((16, 16), RED), 0.0),
]


def table(rows, drop=()):
    cols = {
        "are_different": pa.array([True] * len(rows)),
        "caption": pa.array([r[0] for r in rows], pa.string()),
        "has_label": pa.array([True] * len(rows)),
        "image_0_uid": pa.array([f"uid-{i}-0" for i in range(len(rows))]),
        "image_1_uid": pa.array([f"uid-{i}-1" for i in range(len(rows))]),
        "jpg_0": pa.array([r[1] for r in rows], pa.binary()),
        "jpg_1": pa.array([r[2] for r in rows], pa.binary()),
        "label_0": pa.array([r[3] for r in rows], pa.float64()),
        "label_1": pa.array([1.0 - r[3] for r in rows], pa.float64()),
    }
    return pa.table({k: v for k, v in cols.items() if k not in drop})


def write(name, t):
    pq.write_table(t, os.path.join(OUT, name), row_group_size=2, compression="snappy")


def main():
    os.makedirs(OUT, exist_ok=True)
    write("tiny.parquet", table(ROWS))
    bad = list(ROWS)
    bad[1] = (bad[1][0], bad[1][1], b"this is not a JPEG", bad[1][3])
    write("bad-jpeg.parquet", table(bad))
    write("no-label.parquet", table(ROWS, drop=("label_0",)))
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
