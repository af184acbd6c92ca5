"""The benchmarks' files as users have them: learn2learn's mini-ImageNet pickles (read without running pickled code),
torchmeta's HDF5, several image sets trained as one, a separate held-out set and cbfinn's Omniglot split."""

from __future__ import annotations

import pickle
import random
import struct
import sys
import zipfile

import numpy as np
import pytest

from maml_lab.core.tasks.imagelimits import LoadLimits
from maml_lab.core.tasks.images import (
    CBFINN_TRAIN,
    CBFINN_VAL,
    families_from_image_set,
    heldout_family_from_metadata,
    load_images,
)
from maml_lab.core.tasks.imagesets import Preprocessing, concat_image_sets, load_image_set
from maml_lab.core.tasks.miniimagenet import read_pickle
from tests.benchmark_files import (
    RunsCode,
    full_omniglot_pair,
    miniimagenet_dict,
    omniglot_zip,
    write_hdf5,
    write_pickle,
)

RGB84 = Preprocessing(size=(84, 84), mode="rgb")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_learn2learn_pickle_loads_every_class_with_its_own_images(tmp_path, protocol):
    d = miniimagenet_dict(classes=3, per_class=4)
    path = write_pickle(tmp_path / "mini-imagenet-cache-train.pkl", d, protocol)
    s = load_image_set(path, RGB84)
    assert (s.num_classes, s.num_images, s.image_shape) == (3, 12, (3, 84, 84))
    assert s.class_names == sorted(d["class_dict"])
    for c, name in enumerate(s.class_names):
        lo, hi = s.class_range(c)
        want = d["image_data"][d["class_dict"][name]].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(s.pixels[lo:hi], want)
    assert s.report.layout == "learn2learn mini-ImageNet pickle"


def test_python2_pickles_of_arrays_load_as_numpy_reads_them(tmp_path):
    # Python 2 wrote an array's data as a str; unpickled with encoding latin1 it arrives as text (numpy re-encodes it)
    d = miniimagenet_dict(classes=2, per_class=2, size=8)
    reconstruct, args, state = d["image_data"].__reduce__()

    class Py2Array:
        def __reduce__(self):
            return reconstruct, args, (1, state[1], state[2], 0, state[4].decode("latin1"))

    path = write_pickle(tmp_path / "py2.pkl", {"image_data": Py2Array(), "class_dict": d["class_dict"]}, 2)
    s = load_image_set(path, Preprocessing(size=(8, 8), mode="rgb"))
    first = d["image_data"][d["class_dict"][s.class_names[0]]]
    np.testing.assert_array_equal(s.pixels[:2], first.transpose(0, 3, 1, 2))


def test_pickle_resized_and_grayscale_as_files_would_be(tmp_path):
    d = miniimagenet_dict(classes=2, per_class=2)
    path = write_pickle(tmp_path / "mini.pkl", d)
    s = load_image_set(path, Preprocessing(size=(28, 28), mode="grayscale", invert=False))
    from PIL import Image

    name = s.class_names[0]
    im = Image.fromarray(d["image_data"][d["class_dict"][name][0]]).convert("L").resize((28, 28), Image.LANCZOS)
    np.testing.assert_array_equal(s.pixels[0, 0], np.asarray(im))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    for obj in (RunsCode(marker), {"image_data": RunsCode(marker), "class_dict": {}}, [1, 2, RunsCode(marker)]):
        path = write_pickle(tmp_path / "evil.pkl", obj)
        with pytest.raises(ValueError, match=r"evil\.pkl: refused: names (posix|nt)\.system, which is not a numpy"):
            load_image_set(path, RGB84)
        assert not marker.exists()
    pickle.loads((tmp_path / "evil.pkl").read_bytes())  # the same file does run code through pickle itself
    assert marker.exists()


def test_names_beyond_numpy_arrays_and_containers_are_refused(tmp_path):
    for module, name in (("builtins", "eval"), ("numpy", "load"), ("numpy.core.multiarray", "_reconstruct_x"),
                         ("subprocess", "Popen"), ("builtins", "getattr")):
        data = b"\x80\x04" + b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) \
            + name.encode() + b"\x93" + b")R."
        path = tmp_path / "x.pkl"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=f"names {module}.{name},"):
            read_pickle(path, 1 << 20)


def test_declared_sizes_are_checked_before_anything_is_allocated(tmp_path):
    # a bytes object declaring a terabyte in a file of a few bytes: refused before reading (or allocating) it
    path = tmp_path / "liar.pkl"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc")
    with pytest.raises(ValueError, match=r"declares 1024 GB data where only 3 bytes remain in the file"):
        read_pickle(path, 1 << 30)
    path.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"abc")  # bytearray8 (stock: bytearray(n))
    with pytest.raises(ValueError, match=r"declares 1024 GB"):
        read_pickle(path, 1 << 30)
    # an array larger than the decoded-set limit: refused from its data's declared length, before reading it
    big = write_pickle(tmp_path / "big.pkl", miniimagenet_dict(classes=3, per_class=4), 4)
    with LoadLimits(max_set_bytes=100_000).applied():
        with pytest.raises(ValueError, match=r"big\.pkl: refused: declares a block of 248 KB, over the limit of 102 KB "
                                             r"\(--max-set-bytes\)"):
            load_images(str(big), 84, "rgb")
    # ... and from its declared shape x itemsize, when the data it comes with is smaller
    reconstruct, args, _ = np.zeros(1).__reduce__()

    class LyingArray:
        def __reduce__(self):
            return reconstruct, args, (1, (1 << 20, 8, 8, 3), np.dtype(np.uint8), False, b"x" * 192)

    raw = pickle.dumps(LyingArray(), protocol=4)
    (tmp_path / "shape.pkl").write_bytes(raw)
    with pytest.raises(ValueError, match=r"an array of 192 MB \(1048576x8x8x3 uint8\), over the limit of 1 MB"):
        read_pickle(tmp_path / "shape.pkl", 1 << 20)
    # an object array smuggling code through its elements
    path = write_pickle(tmp_path / "objects.pkl", np.array([RunsCode(tmp_path / "ran"), 1], dtype=object))
    with pytest.raises(ValueError, match=r"an array of dtype\('O'\); only plain numbers are read"):
        read_pickle(path, 1 << 20)
    assert not (tmp_path / "ran").exists()


def test_malformed_pickles_fail_in_one_line(tmp_path):
    cases = {b"": "it is cut short", b"\x80\x04garbage": "not a readable pickle",
             pickle.dumps([1, 2, 3]): "not a mini-ImageNet cache",
             pickle.dumps({"image_data": np.zeros((2, 4, 4, 3), np.float32), "class_dict": {"a": [0]}}):
                 "'image_data' must be uint8 images",
             pickle.dumps({"image_data": np.zeros((2, 4, 4, 3), np.uint8), "class_dict": {"a": [0, 5]}}):
                 "names images outside 0..1"}
    for data, wanted in cases.items():
        path = tmp_path / "bad.pkl"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=wanted) as e:
            load_image_set(path, RGB84)
        assert "\n" not in str(e.value)


def test_torchmeta_hdf5_in_its_labels_order(tmp_path):
    pytest.importorskip("h5py")
    path = write_hdf5(tmp_path, "train", classes=3, per_class=4)
    s = load_image_set(path, RGB84)
    assert (s.num_classes, s.num_images, s.image_shape) == (3, 12, (3, 84, 84))
    import json

    assert s.class_names == json.loads((tmp_path / "train_labels.json").read_text())
    assert s.report.layout == "torchmeta HDF5"


def test_hdf5_links_to_other_files_and_wrong_types_are_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((2, 84, 84, 3), np.uint8))
    path = tmp_path / "test_data.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("datasets")["evil"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")
    with pytest.raises(ValueError, match=r"class 'evil' is a link \(ExternalLink\); links to other objects or files"):
        load_image_set(path, RGB84)
    with h5py.File(path, "w") as f:
        f.create_group("datasets").create_dataset("floats", data=np.zeros((2, 84, 84, 3), np.float32))
    with pytest.raises(ValueError, match=r"class 'floats' must be uint8 images \[n, H, W, 3\], got float32"):
        load_image_set(path, RGB84)
    with h5py.File(path, "w") as f:
        f.create_group("datasets").create_dataset("huge", shape=(10_000, 84, 84, 3), dtype=np.uint8)
    with LoadLimits(max_set_bytes=1 << 20).applied():
        with pytest.raises(ValueError, match=r"its images declare more than 1 MB"):
            load_images(str(path), 84, "rgb")


def test_without_h5py_one_line_says_how_to_get_it(tmp_path, monkeypatch):
    path = tmp_path / "train_data.hdf5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ValueError, match=r"needs h5py: pip install h5py"):
        load_image_set(path, RGB84)


def test_84x84_rgb_builds_the_papers_conv4_with_32_filters_and_max_pooling(tmp_path):
    from maml_lab.core.models.conv4 import Conv4

    train = write_pickle(tmp_path / "train.pkl", miniimagenet_dict(classes=6, per_class=4))
    s = load_images(str(train), 84, "rgb")
    family, _ = families_from_image_set(s, ways=2, rotations=False, data=str(train))
    model = Conv4.for_family(family)
    assert (model.filters, model.downsample, tuple(model.image_size), model.in_channels) == (
        32, "maxpool", (84, 84), 3)


def _zip(path, classes, per_class=3, top="set"):
    return omniglot_zip(path, top, {"Alpha": classes}, per_class)


def test_several_sets_train_as_one_with_their_names_kept_apart(tmp_path):
    a = _zip(tmp_path / "a.zip", 4)
    b = _zip(tmp_path / "b.zip", 5)  # the same alphabet and character names as a.zip
    s = load_images([str(a), str(b)], 28)
    assert s.num_classes == 9 and len(set(s.class_names)) == 9
    assert s.class_names[0] == "a/character01" and s.class_names[4] == "b/character01"
    assert [p["classes"] for p in s.meta["parts"]] == [4, 5]
    np.testing.assert_array_equal(s.pixels[:12], load_images(str(a), 28).pixels)
    twice = concat_image_sets([load_images(str(a), 28), load_images(str(a), 28)])
    assert twice.class_names[4] == "a#2/character01"
    with pytest.raises(ValueError, match=r"the image set .*a\.zip is given twice"):
        load_images([str(a), str(tmp_path / "." / "a.zip")], 28)


def test_several_sets_share_one_decoded_size_limit(tmp_path):
    a, b = _zip(tmp_path / "a.zip", 4), _zip(tmp_path / "b.zip", 4)  # 12 images of 784 bytes each
    with LoadLimits(max_set_bytes=12 * 784 + 100).applied():
        load_images(str(a), 28)
        with pytest.raises(ValueError, match=r"b\.zip: 12 images decoded at 1x28x28 would take 9\.2 KB, over the 100 "
                                             r"bytes left of the limit of 9\.3 KB for all the sets together"):
            load_images([str(a), str(b)], 28)


def test_a_separate_held_out_set_is_evaluated_whole_and_rebuilt_from_metadata(tmp_path):
    a, b, c = _zip(tmp_path / "a.zip", 4), _zip(tmp_path / "b.zip", 4), _zip(tmp_path / "c.zip", 6)
    train_set, eval_set = load_images([str(a), str(b)], 28), load_images(str(c), 28)
    train, heldout = families_from_image_set(train_set, 3, rotations=True, data=[str(a), str(b)], eval_set=eval_set,
                                             eval_data=str(c))
    assert train.image_set.num_classes == 8 * 4 and heldout.image_set.num_classes == 6
    assert train.validation_family is heldout
    task = train.describe()
    assert task["data"] == [str(a), str(b)] and task["eval_data"] == str(c)
    assert task["split"]["name"] == "held-out set"
    rebuilt = heldout_family_from_metadata(task)
    assert rebuilt.image_set.class_names == heldout.image_set.class_names
    np.testing.assert_array_equal(rebuilt.image_set.pixels, heldout.image_set.pixels)
    other = heldout_family_from_metadata(task, data=[str(a)])  # eval --data: another held-out set, whole
    assert other.image_set.num_classes == 4
    from maml_lab.core.tasks.images import image_family_from_config
    from maml_lab.core.training.config import ExperimentConfig

    leak = ExperimentConfig(task="images", data=[str(a), str(b)], eval_data=str(tmp_path / "." / "b.zip"), ways=3)
    with pytest.raises(ValueError, match=r"the held-out set .*b\.zip is also a training set \(--data\)"):
        image_family_from_config(leak)
    c.unlink()
    with pytest.raises(ValueError, match=r"was evaluated on is not at .*c\.zip; pass --data PATH"):
        heldout_family_from_metadata(task)


def test_paper_split_is_cbfinns_on_a_full_omniglot_pair(tmp_path):
    background, evaluation = full_omniglot_pair(tmp_path)
    s = load_images([str(background), str(evaluation)], 28)
    assert s.num_classes == 1623
    train, heldout = families_from_image_set(s, 5, rotations=True, data=[str(background), str(evaluation)],
                                             split="paper")
    val = train.validation_family
    # cbfinn/maml data_generator.py, with the folders listed in sorted order: both zips' alphabets in one folder
    folders = {"images_background": background, "images_evaluation": evaluation}
    tree = {}
    for z in folders.values():
        for name in zipfile.ZipFile(z).namelist():
            _, family, character, _ = name.split("/")
            tree.setdefault(family, set()).add(character)
    character_folders = [f"omniglot_resized/{family}/{character}" for family in sorted(tree)
                         for character in sorted(tree[family])]
    random.seed(1)
    random.shuffle(character_folders)
    num_val = 100
    num_train = 1200 - num_val
    want_train = {"/".join(p.split("/")[1:]) for p in character_folders[:num_train]}
    want_val = {"/".join(p.split("/")[1:]) for p in character_folders[num_train:num_train + num_val]}
    want_test = {"/".join(p.split("/")[1:]) for p in character_folders[num_train + num_val:]}

    def chars(family):
        return {"/".join(n.split("@")[0].split("/")[-2:]) for n in family.image_set.class_names}

    assert chars(train) == want_train and chars(val) == want_val and chars(heldout) == want_test
    assert (len(want_train), len(want_val), len(want_test)) == (CBFINN_TRAIN, CBFINN_VAL, 423)
    assert train.image_set.num_classes == 4 * CBFINN_TRAIN  # rotations by 90, 180, 270 as new classes
    assert heldout.info["split"]["name"] == "paper"
    rebuilt = heldout_family_from_metadata(train.describe())
    assert chars(rebuilt) == want_test


def test_paper_split_needs_the_full_omniglot(tmp_path):
    s = load_images(str(_zip(tmp_path / "a.zip", 30)), 28)
    with pytest.raises(ValueError, match=r"the paper split needs the full Omniglot \(1,623 characters: --data "
                                         r"images_background.zip --data images_evaluation.zip\); a has 30 classes"):
        families_from_image_set(s, 5, split="paper")
