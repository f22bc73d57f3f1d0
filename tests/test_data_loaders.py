"""Dataset loaders (celeba, utkface, fashion-mnist, folder), specs, the decode cache and splits.

Small datasets are written by the tests themselves; the real CelebA subset is read from
``../shared/data/celeba-10k`` and the real Fashion-MNIST from the Debian package's folder, each
skipped with a reason where absent.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privsplit.data import Part, SplitFractions, load_dataset, make_split
from privsplit.data.cache import cache_dir
from privsplit.data.fashion_mnist import CLASSES as FASHION_CLASSES
from privsplit.data.fashion_mnist import DEBIAN_PATH, read_idx
from privsplit.data.splits import Split
from privsplit.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CELEBA = SHARED_DATA / "celeba-10k"
needs_celeba = pytest.mark.skipif(
    not (CELEBA / "list_attr_celeba.txt").is_file(), reason=f"CelebA subset not present at {CELEBA}"
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty decode cache and no progress bars."""
    monkeypatch.setenv("PRIVSPLIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRIVSPLIT_PROGRESS", "0")
    return tmp_path / "cache"


def solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


# --- specs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuch:x", "unknown dataset spec"),
        ("celeba:", "needs a folder"),
        ("utkface", "needs a folder"),
        ("folder:", "needs a folder"),
    ],
)
def test_bad_specs_raise_data_error(spec, message):
    with pytest.raises(DataError, match=message):
        load_dataset(spec)


@pytest.mark.parametrize("kind", ["celeba", "utkface", "folder", "fashion-mnist"])
def test_missing_folder_is_named(tmp_path, kind):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match="no-such-folder"):
        load_dataset(f"{kind}:{missing}")


# --- CelebA layout, synthetic -------------------------------------------------------------------

ATTRS = ("Male", "Smiling", "Young")


def write_celeba(root: Path, rows: list[tuple[str, tuple[int, ...]]], *, identities: dict[str, int] | None = None):
    for i, (name, _) in enumerate(rows):
        solid(root / "img_align_celeba" / name, (20 * i, 100, 200 - 20 * i), size=(30, 40))
    lines = [str(len(rows)), " ".join(ATTRS)] + [f"{n} " + " ".join(f"{v:2d}" for v in vals) for n, vals in rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    if identities is not None:
        (root / "identity_CelebA.txt").write_text("".join(f"{n} {identities[n]}\n" for n, _ in rows))


SMALL_ROWS = [
    ("000001.jpg", (1, -1, 1)),
    ("000002.jpg", (-1, 1, 1)),
    ("000003.jpg", (-1, -1, -1)),
    ("000004.jpg", (1, 1, -1)),
    ("000005.jpg", (1, -1, 1)),
]


def test_celeba_layout_labels_identity_and_crop(tmp_path):
    root = tmp_path / "celeba"
    write_celeba(root, SMALL_ROWS, identities={n: 100 - 10 * i for i, (n, _) in enumerate(SMALL_ROWS)})
    ds = load_dataset(f"celeba:{root}", task="Smiling", private="Male", image_size=16)
    assert ds.images.shape == (5, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.task_labels.tolist() == [0, 1, 0, 1, 0]
    assert ds.private_labels.tolist() == [1, 0, 0, 1, 1]
    assert ds.labels["Young"].tolist() == [1, 1, 0, 0, 1]
    assert ds.classes["Smiling"] == ("not_Smiling", "Smiling")
    assert set(ds.labels) == {*ATTRS, "identity"}
    # identities 100, 90, 80, 70, 60: classes sorted numerically
    assert ds.classes["identity"] == ("60", "70", "80", "90", "100")
    assert ds.labels["identity"].tolist() == [4, 3, 2, 1, 0]
    assert list(ds.ids) == [n for n, _ in SMALL_ROWS]
    # solid images stay (almost) their colour through JPEG, crop and resize
    expected = np.array([[20 * i, 100, 200 - 20 * i] for i in range(5)], dtype=float)
    assert np.abs(ds.images.reshape(5, -1, 3).mean(axis=1) - expected).max() < 4
    small = load_dataset(f"celeba:{root}", task="Smiling", limit=4)
    assert len(small) == 4 and small.image_size == 64


def test_celeba_without_identity_file_has_only_attributes(tmp_path):
    write_celeba(tmp_path, SMALL_ROWS)
    ds = load_dataset(f"celeba:{tmp_path}", task="Young")
    assert set(ds.labels) == set(ATTRS)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "img_align_celeba" / "000003.jpg").unlink(), "000003.jpg"),
        (lambda r: (r / "list_attr_celeba.txt").unlink(), "list_attr_celeba.txt"),
        (lambda r: shutil.rmtree(r / "img_align_celeba"), "img_align_celeba"),
        (lambda r: (r / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg"), "000002.jpg"),
        (lambda r: _edit_attr(r, "000004.jpg  1  1 -1", "000004.jpg  1  0 -1"), "1 or -1"),
        (lambda r: _edit_attr(r, "5\n", "6\n"), "announces 6 images"),
        (lambda r: _edit_attr(r, "000004.jpg  1  1 -1", "000004.jpg  1  1"), "line 6"),
    ],
)
def test_celeba_damage_raises_data_error_naming_it(tmp_path, damage, message):
    write_celeba(tmp_path, SMALL_ROWS)
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(f"celeba:{tmp_path}", task="Smiling")


def _edit_attr(root: Path, old: str, new: str) -> None:
    path = root / "list_attr_celeba.txt"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_unknown_attribute_lists_available_names(tmp_path):
    write_celeba(tmp_path, SMALL_ROWS)
    with pytest.raises(DataError, match="Smiles") as err:
        load_dataset(f"celeba:{tmp_path}", task="Smiles")
    assert "available" in str(err.value) and "Smiling" in str(err.value) and "Young" in str(err.value)
    with pytest.raises(DataError, match="--task"):
        load_dataset(f"celeba:{tmp_path}")  # no default task among 40 attributes


# --- the decode cache ---------------------------------------------------------------------------


def test_cache_hit_returns_identical_arrays_and_edits_invalidate(tmp_path, private_cache, caplog):
    caplog.set_level(logging.DEBUG, logger="privsplit.data.cache")
    write_celeba(tmp_path / "c", SMALL_ROWS)
    spec = f"celeba:{tmp_path / 'c'}"
    first = load_dataset(spec, task="Smiling", image_size=16)
    [entry] = private_cache.glob("celeba-*.npz")
    assert "cache miss" in caplog.text
    # decoded faces are private: the folder is 0700, the entry 0600
    assert (private_cache.stat().st_mode & 0o777, entry.stat().st_mode & 0o777) == (0o700, 0o600)
    caplog.clear()
    second = load_dataset(spec, task="Smiling", image_size=16)
    assert "cache hit" in caplog.text and "cache miss" not in caplog.text
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.task_labels, second.task_labels)
    # another image size is another entry
    caplog.clear()
    assert load_dataset(spec, task="Smiling", image_size=24).images.shape[1] == 24
    assert "cache miss" in caplog.text
    # editing the attribute file (new size/mtime) misses, and the new labels are read
    caplog.clear()
    _edit_attr(tmp_path / "c", "000001.jpg  1 -1  1", "000001.jpg  1  1  1")
    third = load_dataset(spec, task="Smiling", image_size=16)
    assert "cache miss" in caplog.text
    assert third.task_labels.tolist() == [1, 1, 0, 1, 0]
    assert np.array_equal(third.images, first.images)


def test_corrupt_cache_is_rebuilt_and_cache_can_be_switched_off(tmp_path, private_cache, monkeypatch, caplog):
    write_celeba(tmp_path / "c", SMALL_ROWS)
    spec = f"celeba:{tmp_path / 'c'}"
    good = load_dataset(spec, task="Male", image_size=16)
    [entry] = private_cache.glob("celeba-*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="privsplit.data.cache"):
        again = load_dataset(spec, task="Male", image_size=16)
    assert "unreadable cache" in caplog.text
    assert np.array_equal(good.images, again.images)
    monkeypatch.setenv("PRIVSPLIT_CACHE", "off")
    assert cache_dir() is None
    monkeypatch.delenv("PRIVSPLIT_CACHE")
    assert cache_dir() is None  # opt-in: nothing is cached unless PRIVSPLIT_CACHE asks for it
    monkeypatch.setenv("PRIVSPLIT_CACHE", "on")
    assert cache_dir() == Path.home() / ".cache" / "privsplit"
    monkeypatch.setenv("PRIVSPLIT_CACHE", "off")
    off = tmp_path / "off"
    monkeypatch.chdir(tmp_path)
    load_dataset(spec, task="Male", image_size=20)
    assert not off.exists() and len(list(private_cache.glob("*.npz"))) == 1


# --- real CelebA subset -------------------------------------------------------------------------


def _attribute_column(name: str, n: int) -> np.ndarray:
    lines = (CELEBA / "list_attr_celeba.txt").read_text().splitlines()
    col = lines[1].split().index(name) + 1
    return np.array([1 if row.split()[col] == "1" else 0 for row in lines[2 : 2 + n]])


@needs_celeba
def test_real_celeba_subset_matches_attribute_file():
    ds = load_dataset(f"celeba:{CELEBA}", task="Smiling", private="Male", limit=300)
    assert ds.images.shape == (300, 64, 64, 3) and ds.images.dtype == np.uint8
    assert ds.task_labels.dtype == np.int64 and ds.private_labels.dtype == np.int64
    assert np.array_equal(ds.task_labels, _attribute_column("Smiling", 300))
    assert np.array_equal(ds.private_labels, _attribute_column("Male", 300))
    assert set(np.unique(ds.task_labels)) == {0, 1} and set(np.unique(ds.private_labels)) == {0, 1}
    assert len([k for k in ds.labels if k != "identity"]) == 40
    assert ds.ids[0] == "000001.jpg" and ds.ids[299] == "000300.jpg"
    assert ds.classes["identity"][ds.labels["identity"][0]] == "2880"  # identity_CelebA.txt, first row
    # pixels: centre square of the 89x109 JPEG, resized to 64, in RGB order
    with Image.open(CELEBA / "img_align_celeba" / "000001.jpg") as img:
        w, h = img.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        ref = np.asarray(img.convert("RGB").crop(box).resize((64, 64), Image.BILINEAR))
    assert np.array_equal(ds.images[0], ref)
    with pytest.raises(DataError, match="available: .*Male.*Smiling"):
        load_dataset(f"celeba:{CELEBA}", task="Smile", limit=300)


# --- UTKFace ------------------------------------------------------------------------------------

UTK_GOOD = {
    "25_0_2_20170116174525125.jpg.chip.jpg": (2, 0, 2),
    "3_1_0_20161219140623097.jpg.chip.jpg": (0, 1, 0),
    "70_1_4_20170109150557335.jpg.chip.jpg": (7, 1, 4),
    "116_0_1_20170112213001988.jpg": (7, 0, 1),
    "part2/69_0_3_20170104230051454.jpg": (6, 0, 3),
}
UTK_BAD = [
    "39_1_20170116174525125.jpg.chip.jpg",  # no race
    "holiday.jpg",
    "25_2_0_20170116174525125.jpg.chip.jpg",  # gender 2
    "25_0_7_20170116174525125.jpg.chip.jpg",  # race 7
]


def write_utkface(root: Path, names, *, colour=(200, 60, 30)) -> None:
    for name in names:
        solid(root / name, colour, size=(50, 50))


def test_utkface_labels_from_names_and_one_warning_counting_skips(tmp_path):
    write_utkface(tmp_path, [*UTK_GOOD, *UTK_BAD])
    (tmp_path / "README.txt").write_text("not an image, ignored")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(f"utkface:{tmp_path}", task="age_bin", private="gender", image_size=16)
    skips = [w for w in caught if "utkface" in str(w.message)]
    assert len(skips) == 1 and "skipped 4 " in str(skips[0].message)
    assert ds.images.shape == (5, 16, 16, 3)
    assert np.abs(ds.images.astype(float).mean(axis=(0, 1, 2)) - (200, 60, 30)).max() < 4
    by_id = dict(zip(ds.ids, zip(ds.labels["age_bin"], ds.labels["gender"], ds.labels["race"])))
    assert {k: tuple(int(x) for x in v) for k, v in by_id.items()} == UTK_GOOD
    assert ds.classes["age_bin"][-1] == "70+" and len(ds.classes["age_bin"]) == 8
    assert ds.classes["gender"] == ("male", "female")
    assert ds.classes["race"] == ("White", "Black", "Asian", "Indian", "Others")
    assert list(ds.ids) == sorted(ds.ids)  # sorted path order, so --limit is reproducible


def test_utkface_needs_a_task_limit_and_no_valid_files(tmp_path):
    write_utkface(tmp_path / "ok", UTK_GOOD)
    with pytest.raises(DataError, match="--task"):
        load_dataset(f"utkface:{tmp_path / 'ok'}")
    assert len(load_dataset(f"utkface:{tmp_path / 'ok'}", task="race", limit=4)) == 4
    write_utkface(tmp_path / "bad", UTK_BAD)
    with pytest.warns(UserWarning, match="skipped 4"), pytest.raises(DataError, match="no UTKFace images"):
        load_dataset(f"utkface:{tmp_path / 'bad'}", task="gender")


# --- Fashion-MNIST ------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, gz: bool, magic: bytes | None = None) -> Path:
    header = magic if magic is not None else bytes([0, 0, 8, array.ndim])
    raw = header + np.asarray(array.shape, dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.fixture
def tiny_fashion(tmp_path):
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    train_y, test_y = np.array([9, 0, 0, 3, 1]), np.array([2, 8, 7])
    write_idx(tmp_path / "train-images-idx3-ubyte", train_x, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", train_y, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test_x, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", test_y, gz=False)
    return tmp_path, np.concatenate([train_x, test_x]).astype(np.uint8), np.concatenate([train_y, test_y])


def test_fashion_mnist_idx_train_then_test(tiny_fashion):
    root, x, y = tiny_fashion
    ds = load_dataset(f"fashion-mnist:{root}")
    assert ds.task == "class" and ds.classes["class"] == FASHION_CLASSES
    assert ds.images.shape == (8, 28, 28, 1) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[..., 0], x) and ds.task_labels.tolist() == y.tolist()
    assert load_dataset(f"fashion-mnist:{root}", limit=4).task_labels.tolist() == [9, 0, 0, 3]
    assert load_dataset(f"fashion-mnist:{root}", limit=6).task_labels.tolist() == [9, 0, 0, 3, 1, 2]
    assert load_dataset(f"fashion-mnist:{root}", image_size=14).images.shape == (8, 14, 14, 1)


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("train-images-idx3-ubyte", lambda p: p.unlink(), "train-images-idx3-ubyte"),
        ("train-images-idx3-ubyte", lambda p: p.write_bytes(b"\x12\x34\x08\x03" + bytes(100)), "bad magic"),
        ("train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes()[:-7]), r"\(5, 28, 28\) need"),
        ("train-images-idx3-ubyte", lambda p: p.write_bytes(b"\x00\x00\x0d\x03" + p.read_bytes()[4:]), "0x0d"),
        ("t10k-images-idx3-ubyte.gz", lambda p: p.write_bytes(p.read_bytes()[:30]), "t10k-images-idx3-ubyte.gz"),
        ("t10k-labels-idx1-ubyte", lambda p: write_idx(p, np.array([2, 8, 7, 1]), gz=False), "3 images but"),
        ("t10k-labels-idx1-ubyte", lambda p: write_idx(p, np.array([2, 8, 10]), gz=False), "out of range"),
        ("t10k-labels-idx1-ubyte", lambda p: write_idx(p, np.zeros((3, 2)), gz=False), "expected 1 dimension"),
    ],
)
def test_fashion_mnist_malformed_files_name_the_file(tiny_fashion, name, damage, message):
    root, _, _ = tiny_fashion
    damage(root / name)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(f"fashion-mnist:{root}")
    assert name.removesuffix(".gz") in str(err.value)


@pytest.mark.skipif(not Path(DEBIAN_PATH).is_dir(), reason="apt-get install dataset-fashion-mnist to run")
def test_real_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist")  # the default folder
    assert ds.images.shape == (70000, 28, 28, 1)
    assert np.bincount(ds.task_labels).tolist() == [7000] * 10
    assert ds.task_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first train labels
    assert ds.task_labels[60000:60005].tolist() == [9, 2, 1, 1, 6]  # and first test labels
    assert read_idx(Path(DEBIAN_PATH) / "t10k-labels-idx1-ubyte.gz").shape == (10000,)


# --- folder + labels.csv ------------------------------------------------------------------------


def write_folder(root: Path, header: str, rows: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")


def test_folder_labels_crop_and_numeric_classes(tmp_path):
    # 48x32 images: red side bars, a green (or blue) centre square that survives the centre crop
    for name, centre in (("a.png", (0, 255, 0)), ("sub/b.png", (0, 0, 255)), ("c.png", (0, 255, 0))):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        arr = np.zeros((32, 48, 3), dtype=np.uint8)
        arr[:] = (255, 0, 0)
        arr[:, 8:40] = centre
        Image.fromarray(arr).save(tmp_path / name)
    write_folder(tmp_path, "colour,filename,count", ["green,a.png,10", "blue,sub/b.png,2", "green,c.png,1"])
    ds = load_dataset(f"folder:{tmp_path}", task="colour", private="count", image_size=16)
    assert ds.images.shape == (3, 16, 16, 3)
    assert (ds.images[0] == (0, 255, 0)).all() and (ds.images[1] == (0, 0, 255)).all()
    assert ds.classes == {"colour": ("blue", "green"), "count": ("1", "2", "10")}
    assert ds.task_labels.tolist() == [1, 0, 1] and ds.private_labels.tolist() == [2, 1, 0]
    assert list(ds.ids) == ["a.png", "sub/b.png", "c.png"]


def test_folder_first_column_and_single_label_default_task(tmp_path):
    for name in ("x.png", "y.png", "z.png", "w.png"):
        solid(tmp_path / name, (9, 9, 9), size=(20, 20))
    write_folder(tmp_path, "path,kind", ["x.png,cat", "y.png,dog", "z.png,cat", "w.png,dog"])
    ds = load_dataset(f"folder:{tmp_path}", limit=4)
    assert ds.task == "kind" and ds.task_labels.tolist() == [0, 1, 0, 1] and ds.image_size == 64


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (None, None, "labels.csv"),
        ("file,kind", ["x.png,cat", "gone.png,dog"], "gone.png"),
        ("file,kind", ["x.png,cat", "y.png"], "row 3"),
        ("file,kind", ["x.png,cat", "y.png,"], "'kind' is empty"),
        ("file", ["x.png"], "no label columns"),
        ("file,kind,kind", ["x.png,a,b"], "distinct"),
    ],
)
def test_folder_problems_raise_data_error_naming_them(tmp_path, header, rows, message):
    for name in ("x.png", "y.png"):
        solid(tmp_path / name, (9, 9, 9), size=(20, 20))
    if header is not None:
        write_folder(tmp_path, header, rows)
    with pytest.raises(DataError, match=message):
        load_dataset(f"folder:{tmp_path}", task="kind")


# --- splits -------------------------------------------------------------------------------------


def test_make_split_disjoint_sized_and_seeded(tmp_path):
    split = make_split(1000, SplitFractions.parse("0.4,0.2,0.2,0.2"), seed=3)
    assert split.sizes() == {"members": 400, "reference": 200, "holdout": 200, "attacker": 200}
    joined = np.concatenate([split[p] for p in Part])
    assert len(np.unique(joined)) == 1000 and joined.min() == 0 and joined.max() == 999
    again = make_split(1000, SplitFractions(), seed=3)
    assert all(np.array_equal(split[p], again[p]) for p in Part)
    other = make_split(1000, SplitFractions(), seed=4)
    assert not np.array_equal(split[Part.MEMBERS], other[Part.MEMBERS])
    partial = make_split(101, SplitFractions.parse("0.5,0,0.3,0"), seed=0)
    assert partial.sizes() == {"members": 50, "reference": 0, "holdout": 30, "attacker": 0}
    split.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert loaded.seed == 3 and all(np.array_equal(split[p], loaded[p]) for p in Part)


@pytest.mark.parametrize(
    "text", ["0.5,0.5,0.5,0.5", "a,b,c,d", "0.5,0.5", "-0.1,0.5,0.3,0.3", "0,0.5,0.5,0", "0.5,0.5,0,0"]
)
def test_bad_split_fractions_raise_config_error(text):
    with pytest.raises(ConfigError):
        SplitFractions.parse(text)


def test_too_small_to_split():
    with pytest.raises(ConfigError):
        make_split(3)
    with pytest.raises(DataError, match="--limit"):
        load_dataset("digits", limit=2)
