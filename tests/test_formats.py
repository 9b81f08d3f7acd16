"""Annotation formats (Pascal VOC, YOLO, COCO), their layout scanners and `blastscope convert`.

Real data: BCCD (364 VOC files) and the PBC sample (YOLO), from ../shared/data. Expected values
are either the dataset facts of issue 2 or computed independently from the raw files here.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import defusedxml.ElementTree as DET
import numpy as np
import pytest

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.cli.main import main
from blastscope.data.convert import convert_dataset, detect_format
from blastscope.data.formats import coco, load_annotation, voc, yolo
from blastscope.data.types import ImageAnnotation

PBC_NAMES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil"]
FIG4_SHARED = Path("reference") / "paper.md"


# --------------------------------------------------------------------------- independent helpers
def raw_voc(xml: Path) -> tuple:
    """The integer content of a VOC file, parsed here without blastscope: size and objects."""
    root = DET.parse(str(xml)).getroot()
    size = tuple(int(root.findtext(f"size/{k}")) for k in ("width", "height", "depth"))
    objects = [
        (
            o.findtext("name"),
            int(o.findtext("truncated")),
            int(o.findtext("difficult")),
            *(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")),
        )
        for o in root.findall("object")
    ]
    return root.findtext("filename"), size, objects


def tag_tree(el) -> list:
    """Element names in document order with their nesting: [(tag, [children...]), ...]."""
    return [(child.tag, tag_tree(child)) for child in el]


def copy_voc_subset(bccd: Path, dest: Path, stems: list[str], image_sets: bool = True) -> Path:
    (dest / "Annotations").mkdir(parents=True)
    (dest / "JPEGImages").mkdir()
    for stem in stems:
        shutil.copy(bccd / "Annotations" / f"{stem}.xml", dest / "Annotations")
        shutil.copy(bccd / "JPEGImages" / f"{stem}.jpg", dest / "JPEGImages")
    if image_sets:
        main_dir = dest / "ImageSets" / "Main"
        main_dir.mkdir(parents=True)
        for split in ("train", "val", "test"):
            ids = (bccd / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
            (main_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids if i in stems))
    return dest


@pytest.fixture(scope="module")
def bccd_stems(bccd) -> list[str]:
    return sorted(p.stem for p in (bccd / "Annotations").glob("*.xml"))


@pytest.fixture(scope="module")
def bccd_raw(bccd, bccd_stems) -> dict[str, tuple]:
    return {s: raw_voc(bccd / "Annotations" / f"{s}.xml") for s in bccd_stems}


# ------------------------------------------------------------------------------------- VOC reading
def test_read_bccd_counts_splits_and_boxes(bccd, bccd_raw):
    log = ProblemLog(stream=None)
    records, classes = voc.read_dataset(bccd, log)
    assert len(log) == 0 and len(records) == 364
    assert Counter(c for r in records for c in r.ann.labels) == {"RBC": 4155, "WBC": 372, "Platelets": 361}
    assert classes == ["Platelets", "RBC", "WBC"]  # sorted when no names are given

    expected_split = {}
    for split in ("train", "val", "test"):
        for i in (bccd / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            expected_split[i] = split
    assert {Path(r.annotation).stem: r.split for r in records} == expected_split

    # boxes: VOC 1-based inclusive -> continuous 0-based (x1 = xmin - 1, x2 = xmax)
    for r in records:
        _, (w, h, _), objects = bccd_raw[Path(r.annotation).stem]
        expected = np.array([[o[3] - 1, o[4] - 1, o[5], o[6]] for o in objects], dtype=np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(r.ann.boxes, expected)
        assert (r.ann.width, r.ann.height) == (w, h)
        assert Path(r.ann.image).is_file()

    # BCCD's two single-pixel boxes (xmin == xmax) are read as one pixel wide, not rejected
    one_pixel = [r for r in records if ((r.ann.boxes[:, 2] - r.ann.boxes[:, 0]) == 1).any()]
    assert {Path(r.annotation).stem for r in one_pixel} >= {"BloodImage_00338", "BloodImage_00343"}


def test_scan_rows_label_is_shared_class_or_empty(bccd):
    rows, _ = voc.scan(bccd, ProblemLog(stream=None), names=["RBC", "WBC", "Platelets"])
    for row in rows:
        names = {o[0] for o in raw_voc(Path(row["annotation"]))[2]}
        assert row["label"] == (names.pop() if len(names) == 1 else "")
        assert row["source"] == "voc" and row["width"] == "640" and row["height"] == "480"


# ---------------------------------------------------------------------------------- round trips
def _assert_same_voc(out_voc: Path, bccd_raw: dict):
    written = {p.stem: raw_voc(p) for p in (out_voc / "Annotations").glob("*.xml")}
    assert written.keys() == bccd_raw.keys()
    for stem, (filename, size, objects) in bccd_raw.items():
        assert written[stem] == (filename, size, objects), stem
        assert (out_voc / "JPEGImages" / filename).is_file()


@pytest.mark.parametrize("middle", ["yolo", "coco"])
def test_voc_round_trip_lossless_on_all_bccd(bccd, bccd_raw, tmp_path, middle):
    log = ProblemLog(stream=None)
    convert_dataset(bccd, middle, tmp_path / middle, log=log, copy_images=False)
    assert detect_format(tmp_path / middle) == middle
    convert_dataset(tmp_path / middle, "voc", tmp_path / "voc", log=log, copy_images=False)
    assert len(log) == 0
    _assert_same_voc(tmp_path / "voc", bccd_raw)
    for split in ("train", "val", "test"):  # splits survive both conversions
        expected = (bccd / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        got = (tmp_path / "voc" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert sorted(got) == sorted(expected)


def test_yolo_lines_are_normalised_centres(tmp_path):
    ann = ImageAnnotation("x.jpg", 200, 100, boxes=[[10, 20, 50, 60]], labels=["b"])
    path = yolo.write_yolo(ann, tmp_path / "x.txt", ["a", "b"])
    cls, *vals = path.read_text().split()
    assert cls == "1"
    np.testing.assert_allclose([float(v) for v in vals], [30 / 200, 40 / 100, 40 / 200, 40 / 100])
    back = yolo.read_yolo(path, width=200, height=100, classes=["a", "b"])
    np.testing.assert_allclose(back.boxes, ann.boxes, atol=1e-4)


def test_coco_output_loads_in_pycocotools_with_our_boxes(bccd, bccd_raw, tmp_path):
    from pycocotools.coco import COCO

    convert_dataset(bccd, "coco", tmp_path / "c", log=ProblemLog(stream=None), copy_images=False)
    files = sorted((tmp_path / "c" / "annotations").glob("*.json"))
    assert [f.name for f in files] == ["instances_test.json", "instances_train.json", "instances_val.json"]
    n_images = 0
    for f in files:
        api = COCO(str(f))
        assert [api.cats[i]["name"] for i in sorted(api.cats)] == ["Platelets", "RBC", "WBC"]
        for img in api.loadImgs(api.getImgIds()):
            n_images += 1
            _, (w, h, _), objects = bccd_raw[Path(img["file_name"]).stem]
            assert (img["width"], img["height"]) == (w, h)
            anns = api.loadAnns(api.getAnnIds(imgIds=img["id"]))
            got = sorted((api.cats[a["category_id"]]["name"], *a["bbox"]) for a in anns)
            # COCO [x, y, w, h] from the raw VOC integers: x = xmin - 1, w = xmax - xmin + 1
            want = sorted((o[0], o[3] - 1, o[4] - 1, o[5] - o[3] + 1, o[6] - o[4] + 1) for o in objects)
            assert got == want
            assert all(a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in anns)
    assert n_images == 364


# ----------------------------------------------------------------------------------- VOC writing
def test_written_voc_has_the_fig4_structure(shared_data, tmp_path):
    paper = shared_data.parent / FIG4_SHARED
    if not paper.is_file():
        pytest.skip(f"paper not found at {paper}")
    fig4 = re.search(r"<annotation>.*?</annotation>", paper.read_text(encoding="utf-8"), re.S).group(0)
    expected = DET.fromstring(fig4)
    ann = ImageAnnotation(str(tmp_path / "images" / "UID_1_1_all.jpg"), 458, 458, boxes=[[90, 121, 349, 335]], labels=["ALL"])
    xml = voc.write_voc(ann, tmp_path / "UID_1_1_all.xml")
    root = DET.parse(str(xml)).getroot()
    assert root.tag == expected.tag == "annotation"
    assert tag_tree(root) == tag_tree(expected)
    # the values of Fig. 4 that do not depend on the machine
    for path in (
        "folder",
        "filename",
        "source/database",
        "size/width",
        "size/height",
        "size/depth",
        "segmented",
        "object/name",
        "object/pose",
        "object/truncated",
        "object/difficult",
        "object/bndbox/xmin",
        "object/bndbox/ymin",
        "object/bndbox/xmax",
        "object/bndbox/ymax",
    ):
        assert root.findtext(path) == expected.findtext(path), path
    assert xml.read_text().startswith("<annotation>\n  <folder>")  # pretty-printed, LabelImg-readable


def test_write_voc_refuses_to_overwrite(tmp_path):
    ann = ImageAnnotation("a.jpg", 10, 10, boxes=[[1, 1, 5, 5]], labels=["x"])
    xml = voc.write_voc(ann, tmp_path / "a.xml")
    before = xml.read_bytes()
    ann2 = ImageAnnotation("a.jpg", 10, 10, boxes=[[2, 2, 6, 6]], labels=["y"])
    with pytest.raises(BlastscopeError, match=r"a\.xml.*already exists.*--overwrite"):
        voc.write_voc(ann2, xml)
    assert xml.read_bytes() == before
    voc.write_voc(ann2, xml, overwrite=True)
    assert raw_voc(xml)[2] == [("y", 0, 0, 3, 3, 6, 6)]


# ------------------------------------------------------------------------------------- bad input
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>&lol4;</filename></annotation>
"""


def _edit(text: str, case: str) -> str:
    first_box = re.compile(r"<xmin>\d+</xmin>(\s*)<ymin>(\d+)</ymin>(\s*)<xmax>\d+</xmax>")
    if case == "malformed":
        return text.replace("</annotation>", "")
    if case == "billion_laughs":
        return BILLION_LAUGHS
    if case == "missing_image":
        return text.replace(".jpg</filename>", "_gone.jpg</filename>")
    if case == "escaping_name":
        return re.sub(r"<filename>.*?</filename>", "<filename>../../etc/passwd</filename>", text)
    if case == "outside":
        return re.sub(r"<xmax>\d+</xmax>", "<xmax>700</xmax>", text, count=1)
    if case == "xmin_ge_xmax":
        return first_box.sub(r"<xmin>300</xmin>\1<ymin>\2</ymin>\3<xmax>200</xmax>", text, count=1)
    if case == "no_size":
        return re.sub(r"<size>.*?</size>", "", text, flags=re.S)
    if case == "non_numeric":
        return re.sub(r"<ymin>\d+</ymin>", "<ymin>twelve</ymin>", text, count=1)
    if case == "unknown_class":
        return text.replace("<name>WBC</name>", "<name>Blast</name>", 1)
    raise AssertionError(case)


BAD_VOC = {  # case -> words the problem line must contain
    "malformed": "malformed XML",
    "billion_laughs": "hostile XML",
    "missing_image": "does not exist",
    "escaping_name": "escapes the dataset folder",
    "outside": "outside the 640x480 image",
    "xmin_ge_xmax": "xmin > xmax",
    "unknown_class": "unknown class 'Blast'",
    "no_size": "missing <size>",
    "non_numeric": "'twelve', not a number",
}


@pytest.mark.parametrize("case", list(BAD_VOC))
def test_bad_voc_file_is_reported_and_the_rest_processed(bccd, tmp_path, case):
    stems = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002", "BloodImage_00003"]
    root = copy_voc_subset(bccd, tmp_path / "voc", stems, image_sets=False)
    bad = root / "Annotations" / "BloodImage_00001.xml"
    bad.write_text(_edit(bad.read_text(), case))
    log = ProblemLog(stream=None)
    rows, _ = voc.scan(root, log, names=["RBC", "WBC", "Platelets"])
    assert [Path(r["annotation"]).stem for r in rows] == ["BloodImage_00000", "BloodImage_00002", "BloodImage_00003"]
    assert len(log) == 1
    line = str(log.problems[0])
    assert line.startswith(str(bad)) and BAD_VOC[case] in line
    with pytest.raises(BlastscopeError, match=re.escape(BAD_VOC[case])) as err:
        voc.read_voc(bad, classes=["RBC", "WBC", "Platelets"])
    assert str(bad) in str(err.value)


def _pbc_subset(pbc: Path, dest: Path, per_class: int = 1) -> Path:
    """``dest/train/{images,labels}`` with the first ``per_class`` PBC train images of each class."""
    (dest / "train" / "images").mkdir(parents=True)
    (dest / "train" / "labels").mkdir()
    seen: Counter = Counter()
    for txt in sorted((pbc / "train" / "labels").glob("*.txt")):
        cls = txt.read_text().split()[0]
        if seen[cls] < per_class:
            seen[cls] += 1
            shutil.copy(txt, dest / "train" / "labels")
            shutil.copy(pbc / "train" / "images" / f"{txt.stem}.jpg", dest / "train" / "images")
    return dest


def test_yolo_class_index_out_of_range_is_reported(pbc_sample, tmp_path):
    root = _pbc_subset(pbc_sample, tmp_path / "y")
    labels = sorted((root / "train" / "labels").glob("*.txt"))
    bad = labels[2]
    bad.write_text("9" + bad.read_text()[1:])
    log = ProblemLog(stream=None)
    rows, classes = yolo.scan(root, log, names=PBC_NAMES)
    assert classes == PBC_NAMES
    assert len(rows) == len(labels) - 1 and str(bad) not in {r["annotation"] for r in rows}
    assert len(log) == 1
    line = str(log.problems[0])
    assert line.startswith(str(bad)) and "class index 9 is out of range" in line


@pytest.mark.parametrize(
    ("line", "words"),
    [("0 0.5 0.5 0.2", "expected 5"), ("0 0.5 abc 0.2 0.2", "not numeric"), ("0 1.2 0.5 0.2 0.2", "outside [0, 1]")],
)
def test_yolo_malformed_lines_name_file_and_line(tmp_path, line, words):
    txt = tmp_path / "a.txt"
    txt.write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
    with pytest.raises(BlastscopeError, match=re.escape(words)) as err:
        yolo.read_yolo(txt, width=100, height=100, classes=["x"])
    assert f"{txt}: line 2" in str(err.value)


# ------------------------------------------------------------------------------------------ YOLO
def test_pbc_yolo_scan_counts(pbc_sample):
    log = ProblemLog(stream=None)
    rows, classes = yolo.scan(pbc_sample, log, names=PBC_NAMES)
    assert len(log) == 0 and classes == PBC_NAMES
    counts = Counter((r["split"], r["label"]) for r in rows)
    assert counts == {**{("train", c): 120 for c in PBC_NAMES}, **{("test", c): 40 for c in PBC_NAMES}}
    # without names (PBC ships none) the class indices are the names
    _, plain = yolo.scan(pbc_sample, ProblemLog(stream=None))
    assert plain == [str(i) for i in range(7)]


def test_yolo_layouts_names_files_and_missing_labels(pbc_sample, tmp_path):
    src = _pbc_subset(pbc_sample, tmp_path / "src")
    images = sorted((src / "train" / "images").glob("*.jpg"))
    root = tmp_path / "y"
    for i, image in enumerate(images[:3]):  # images/<split> + labels/<split>, "valid" means val
        split = ["train", "valid", "test"][i]
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        shutil.copy(image, root / "images" / split)
        if split != "test":  # the test image has no label file: zero boxes
            shutil.copy(src / "train" / "labels" / f"{image.stem}.txt", root / "labels" / split)
    (root / "data.yaml").write_text("names:\n  " + "\n  ".join(f"{i}: {n}" for i, n in enumerate(PBC_NAMES)) + "\n")
    assert yolo.read_class_names(root) == PBC_NAMES
    log = ProblemLog(stream=None)
    records, classes = yolo.read_dataset(root, log)
    assert len(log) == 0 and classes == PBC_NAMES
    assert sorted(r.split for r in records) == ["test", "train", "val"]
    assert {r.split: len(r.ann) for r in records} == {"train": 1, "val": 1, "test": 0}


# ------------------------------------------------------------------------------ load_annotation
def test_load_annotation_dispatches_on_the_manifest_value(bccd, tmp_path):
    xml = bccd / "Annotations" / "BloodImage_00005.xml"
    ref = voc.read_voc(xml)
    out = tmp_path / "c"
    root = copy_voc_subset(bccd, tmp_path / "v", ["BloodImage_00005"], image_sets=False)
    convert_dataset(root, "coco", out, log=ProblemLog(stream=None))
    convert_dataset(root, "yolo", tmp_path / "y", log=ProblemLog(stream=None))
    classes = sorted(set(ref.labels))
    rows, _ = coco.scan(out, ProblemLog(stream=None))
    for spec in (str(xml), rows[0]["annotation"], str(tmp_path / "y" / "labels" / "BloodImage_00005.txt")):
        ann = load_annotation(spec, classes=classes, image=ref.image, width=640, height=480)
        np.testing.assert_allclose(ann.boxes, ref.boxes, atol=1e-3)
        assert ann.labels == ref.labels and ann.image == ref.image
    assert rows[0]["annotation"].endswith(".json#1")
    with pytest.raises(BlastscopeError, match="unknown class"):
        load_annotation(rows[0]["annotation"], classes=["RBC"])
    with pytest.raises(BlastscopeError, match="image id 7 not in the json"):
        load_annotation(rows[0]["annotation"][:-1] + "7")


# ------------------------------------------------------------------------------------------- CLI
def test_cli_converts_ten_bccd_files_end_to_end(bccd, bccd_stems, bccd_raw, tmp_path, capsys):
    stems = bccd_stems[:10]
    src = copy_voc_subset(bccd, tmp_path / "src", stems)
    assert main(["convert", str(src), "--to", "coco", "--out", str(tmp_path / "coco")]) == 0
    out = capsys.readouterr().out
    boxes = Counter(o[0] for s in stems for o in bccd_raw[s][2])
    assert f"10 images, {sum(boxes.values())} boxes (coco)" in out
    for name, n in boxes.items():
        assert re.search(rf"{name}\s+{n}\n", out)
    assert len(list((tmp_path / "coco" / "images").glob("*.jpg"))) == 10

    # back to VOC through the CLI: identical integer boxes
    assert main(["convert", str(tmp_path / "coco"), "--to", "voc", "--out", str(tmp_path / "voc")]) == 0
    _assert_same_voc(tmp_path / "voc", {s: bccd_raw[s] for s in stems})

    # a non-empty output folder is refused with one line (exit 2), --overwrite allows it
    assert main(["convert", str(src), "--to", "yolo", "--out", str(tmp_path / "voc")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["convert", str(src), "--to", "yolo", "--out", str(tmp_path / "voc"), "--overwrite"]) == 0
    assert len(list((tmp_path / "voc" / "labels").rglob("*.txt"))) == 10


def test_convert_from_a_manifest_csv(bccd, bccd_stems, bccd_raw, tmp_path):
    from blastscope.data.manifest import new_manifest, write_manifest

    stems = bccd_stems[:5]
    src = copy_voc_subset(bccd, tmp_path / "src", stems)
    rows, classes = voc.scan(src, ProblemLog(stream=None))
    rows.append({"image": str(src / "JPEGImages" / f"{stems[0]}.jpg"), "annotation": ""})  # no boxes yet
    df = new_manifest(rows)
    df.attrs["classes"] = classes
    csv = write_manifest(df, tmp_path / "m" / "manifest.csv")
    log = ProblemLog(stream=None)
    convert_dataset(csv, "yolo", tmp_path / "y", log=log)
    assert len(log) == 1 and "has no annotation" in str(log.problems[0])
    convert_dataset(tmp_path / "y", "voc", tmp_path / "v", log=log)
    _assert_same_voc(tmp_path / "v", {s: bccd_raw[s] for s in stems})
