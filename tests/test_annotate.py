"""Automatic cell boxes (annotate.autobox) and `blastscope annotate` (VOC XML per image).

Real data: the 8 C-NMC 2019 sample images (CC BY 3.0) from ../shared/data. The foreground used as
ground truth is computed here independently of the code under test: any channel above a small level.
"""

from __future__ import annotations

import io
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.annotate import (
    annotate,
    annotate_manifest,
    cell_box,
    cell_mask,
    folder_rows,
)
from blastscope.cli.main import main
from blastscope.data.formats.voc import read_voc
from blastscope.data.images import read_image
from blastscope.data.manifest import read_manifest, write_manifest

FG_LEVEL = 5  # a pixel is cell when any channel is above this (the C-NMC background is exact 0)
SLACK_PX = 3  # how much larger than the cell's tight extent a box may be, per side

FIG4_CHILDREN = ["folder", "filename", "path", "source", "size", "segmented", "object"]
FIG4_OBJECT = ["name", "pose", "truncated", "difficult", "bndbox"]


def _images(root: Path) -> list[Path]:
    return sorted(root.rglob("*.bmp"))


def _foreground(img: np.ndarray) -> np.ndarray:
    return (img > FG_LEVEL).any(axis=2)


def _extent(mask: np.ndarray) -> np.ndarray:
    """Tight xyxy (continuous, exclusive max) of a boolean mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


def _inside(mask: np.ndarray, box) -> float:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return mask[y0:y1, x0:x1].sum() / mask.sum()


def _cnmc_rows(cnmc_sample: Path) -> list[dict]:
    """Manifest rows for the sample: label from the class folder, 1105.bmp from the label CSV."""
    labels_csv = next(cnmc_sample.rglob("C-NMC_test_prelim_phase_data_labels.csv"))
    test_labels = pd.read_csv(labels_csv, dtype=str)
    by_name = {r.new_names: ("ALL" if r.labels == "1" else "HEM") for r in test_labels.itertuples()}
    rows = []
    for p in _images(cnmc_sample):
        label = by_name[p.name] if p.name in by_name else p.parent.name.upper()
        rows.append({"image": str(p), "label": label})
    return rows


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


# --------------------------------------------------------------------------- autobox


def test_box_of_a_rectangle_is_exact_continuous_xyxy():
    img = np.zeros((50, 60, 3), np.uint8)
    img[7:20, 11:42, 2] = 90  # rows 7..19, columns 11..41, blue channel only
    assert cell_box(img).tolist() == [11.0, 7.0, 42.0, 20.0]
    assert cell_box(img).dtype == np.float32


def test_no_cell_gives_none():
    assert cell_box(np.zeros((450, 450, 3), np.uint8)) is None
    tiny = np.zeros((450, 450, 3), np.uint8)
    tiny[100:105, 100:105] = 200  # 25 px: a speck, not a cell
    assert cell_box(tiny, min_area=100) is None
    assert cell_box(tiny, min_area=10).tolist() == [100.0, 100.0, 105.0, 105.0]


def test_bad_input_is_a_value_error_naming_the_value():
    with pytest.raises(ValueError, match="float64"):
        cell_box(np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match=r"\(10, 10, 5\)"):
        cell_box(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(ValueError, match="min_area"):
        cell_box(np.zeros((10, 10, 3), np.uint8), min_area=0)


def test_real_cnmc_boxes_hold_the_cell_and_are_tight(cnmc_sample):
    images = _images(cnmc_sample)
    assert len(images) == 8
    for path in images:
        img = read_image(path)
        fg = _foreground(img)
        box = cell_box(img)
        assert box is not None, path.name
        assert _inside(fg, box) >= 0.99, path.name
        ext = _extent(fg)
        grow = np.array([ext[0] - box[0], ext[1] - box[1], box[2] - ext[2], box[3] - ext[3]])
        assert (grow <= SLACK_PX).all(), (path.name, box, ext)
        body = _extent((img > 32).any(axis=2))  # the bright cell body must never be cut
        assert box[0] <= body[0] and box[1] <= body[1] and box[2] >= body[2] and box[3] >= body[3], path.name
        assert 0 <= box[0] < box[2] <= img.shape[1] and 0 <= box[1] < box[3] <= img.shape[0]


def test_specks_far_from_the_cell_are_ignored(cnmc_sample):
    rng = np.random.default_rng(0)
    for path in _images(cnmc_sample)[:3]:
        img = read_image(path)
        clean = cell_box(img)
        fg = _foreground(img)
        ys, xs = np.nonzero(~fg)
        far = (xs < clean[0] - 20) | (xs > clean[2] + 20) | (ys < clean[1] - 20) | (ys > clean[3] + 20)
        pick = rng.choice(np.flatnonzero(far), size=40, replace=False)
        specked = img.copy()
        specked[ys[pick], xs[pick]] = 255  # salt
        specked[2:5, 2:5] = (200, 40, 220)  # a 3x3 stain blob in the corner
        assert (cell_box(specked) != clean).sum() == 0, path.name
        assert not cell_mask(specked)[ys[pick], xs[pick]].any()


def test_jpeg_copy_gets_nearly_the_same_box(cnmc_sample):
    for path in _images(cnmc_sample):
        img = read_image(path)
        clean = cell_box(img)
        for quality in (50, 90):
            box = cell_box(_jpeg(img, quality))
            assert np.abs(box - clean).max() <= SLACK_PX, (path.name, quality, box, clean)


def test_dim_rim_pixels_are_kept():
    img = np.zeros((100, 100, 3), np.uint8)
    img[30:60, 30:70] = 150
    img[29, 30:70] = 3  # a one-pixel rim darker than any fixed "safe" threshold
    img[30:60, 70] = 4
    assert cell_box(img).tolist() == [30.0, 29.0, 71.0, 60.0]


def test_any_colour_channel_counts_and_alpha_does_not():
    want = [11.0, 7.0, 42.0, 20.0]
    for channel in range(3):  # a cell visible in one stain channel only
        img = np.zeros((50, 60, 3), np.uint8)
        img[7:20, 11:42, channel] = 90
        assert cell_box(img).tolist() == want, channel
    grey = np.zeros((50, 60), np.uint8)
    grey[7:20, 11:42] = 90
    assert cell_box(grey).tolist() == want
    assert cell_box(grey[..., None]).tolist() == want
    rgba = np.full((50, 60, 4), 255, np.uint8)  # opaque alpha everywhere: not foreground
    rgba[..., :3] = 0
    rgba[7:20, 11:42, 1] = 90
    assert cell_box(rgba).tolist() == want


# --------------------------------------------------------------------------- annotate -> VOC XML


def _children(el) -> list[str]:
    return [c.tag for c in el]


def test_annotate_writes_fig4_voc_mirroring_the_tree(cnmc_sample, tmp_path):
    rows = _cnmc_rows(cnmc_sample)
    log = ProblemLog(stream=None)
    df = annotate(rows, tmp_path / "ann", log=log, progress=False)
    assert len(log) == 0
    assert len(df) == 8 and all(df["annotation"])
    expect = tmp_path / "ann" / "training_data" / "fold_0" / "all" / "UID_1_2_2_all.xml"
    assert expect.is_file()
    assert str(expect.resolve()) in set(df["annotation"])
    for row in df.itertuples():
        xml = Path(row.annotation)
        image = Path(row.image)
        assert xml.relative_to((tmp_path / "ann").resolve()).with_suffix(".bmp") == image.relative_to(cnmc_sample.resolve())
        root = ET.parse(xml).getroot()
        assert root.tag == "annotation"
        assert _children(root) == FIG4_CHILDREN
        assert root.findtext("filename") == image.name
        assert Path(root.findtext("path")).name == image.name
        assert root.findtext("source/database") == "Unknown"
        assert _children(root.find("size")) == ["width", "height", "depth"]
        assert [root.findtext(f"size/{k}") for k in ("width", "height", "depth")] == ["450", "450", "3"]
        assert root.findtext("segmented") == "0"
        obj = root.findall("object")
        assert len(obj) == 1 and _children(obj[0]) == FIG4_OBJECT
        label = "HEM" if image.parent.name == "hem" else "ALL"  # 1105.bmp is ALL per its label CSV
        assert obj[0].findtext("name") == row.label == label
        assert obj[0].findtext("pose") == "Unspecified"
        assert obj[0].findtext("truncated") == "0" and obj[0].findtext("difficult") == "0"
        assert _children(obj[0].find("bndbox")) == ["xmin", "ymin", "xmax", "ymax"]
        voc = np.array([float(obj[0].findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
        # VOC stores 1-based inclusive pixels: xmin_voc = first column + 1, xmax_voc = last column + 1
        ext = _extent(_foreground(read_image(image)))
        assert np.abs(voc - (ext + [1, 1, 0, 0])).max() <= SLACK_PX, (image.name, voc, ext)
        assert row.width == "450" and row.height == "450"
        back = read_voc(xml, image_root=image.parent)  # the project reader gives the computed box back
        assert back.labels == [label] and back.boxes.tolist() == [cell_box(read_image(image)).tolist()]


def test_existing_xml_is_kept_unless_overwrite(cnmc_sample, tmp_path):
    rows = _cnmc_rows(cnmc_sample)[:3]
    out = tmp_path / "ann"
    first = annotate_manifest(rows, out, log=ProblemLog(stream=None), progress=False)
    assert (first.annotated, first.kept) == (3, 0)
    xmls = [Path(p) for p in first.manifest["annotation"]]
    edited = xmls[0].read_text().replace("<pose>Unspecified</pose>", "<pose>Frontal</pose>")
    xmls[0].write_text(edited)  # as if corrected by hand in LabelImg
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in xmls}

    stream = io.StringIO()
    again = annotate_manifest(rows, out, log=ProblemLog(stream=stream), progress=False)
    assert (again.annotated, again.kept) == (0, 3)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in xmls} == before
    assert list(again.manifest["annotation"]) == [str(p) for p in xmls]
    assert set(again.manifest["width"]) == {"450"} and set(again.manifest["height"]) == {"450"}
    assert stream.getvalue().count("kept 3 existing annotations; pass --overwrite") == 1

    redo = annotate_manifest(rows, out, overwrite=True, log=ProblemLog(stream=None), progress=False)
    assert (redo.annotated, redo.kept) == (3, 0)
    assert "Frontal" not in xmls[0].read_text() and "Unspecified" in xmls[0].read_text()


def test_black_and_corrupt_images_are_reported_and_others_annotated(cnmc_sample, tmp_path):
    src = tmp_path / "src" / "ALL"
    src.mkdir(parents=True)
    real = _images(cnmc_sample)[0]
    shutil.copy(real, src / "cell.bmp")
    Image.fromarray(np.zeros((450, 450, 3), np.uint8)).save(src / "black.png")
    (src / "broken.bmp").write_bytes(real.read_bytes()[:500])
    log = ProblemLog(stream=None)
    result = annotate_manifest(folder_rows(tmp_path / "src"), tmp_path / "ann", log=log, progress=False)
    assert result.annotated == 1
    assert [Path(p).name for p in result.no_cell] == ["black.png"]
    assert [Path(p).name for p in result.failed] == ["broken.bmp"]
    problems = {Path(p.path).name: p.message for p in log}
    assert "no cell found" in problems["black.png"]
    assert "cannot decode image" in problems["broken.bmp"]
    assert (tmp_path / "ann" / "cell.xml").is_file()
    assert not (tmp_path / "ann" / "black.xml").exists() and not (tmp_path / "ann" / "broken.xml").exists()
    by_name = dict(zip(result.manifest["image"].map(lambda p: Path(p).name), result.manifest["annotation"]))
    assert by_name["black.png"] == "" and by_name["cell.bmp"].endswith("cell.xml")


def test_threads_give_the_serial_files_manifest_and_problems_in_row_order(cnmc_sample, tmp_path):
    src = tmp_path / "src" / "ALL"
    src.mkdir(parents=True)
    real = _images(cnmc_sample)
    for i, path in enumerate(real):
        shutil.copy(path, src / f"c{i}_cell{path.suffix}")
        if i % 3 == 0:  # problems between the cells: a black image and a truncated one
            Image.fromarray(np.zeros((450, 450, 3), np.uint8)).save(src / f"c{i}_dark.png")
            (src / f"c{i}_zbroken.bmp").write_bytes(real[0].read_bytes()[:500])
    rows = folder_rows(tmp_path / "src")
    runs = {}
    for workers in (1, 3):
        log = ProblemLog(stream=None)
        out = tmp_path / f"ann{workers}"
        res = annotate_manifest(rows, out, log=log, progress=False, workers=workers)
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.xml"))}
        manifest = res.manifest.assign(annotation=[Path(p).name if p else "" for p in res.manifest["annotation"]])
        runs[workers] = (files, manifest, [(Path(p.path).name, p.message) for p in log], res.no_cell, res.failed)
    files, manifest, problems, no_cell, failed = runs[3]
    assert len(files) == len(real) and files == runs[1][0]
    pd.testing.assert_frame_equal(manifest, runs[1][1])
    assert problems == runs[1][2] and no_cell == runs[1][3] and failed == runs[1][4]
    names = [name for name, _ in problems]
    assert names == sorted(names) and len(names) == 2 * len(no_cell) == 2 * len(failed) == 2 * len(range(0, len(real), 3))
    with pytest.raises(BlastscopeError, match="workers is 0; give 1 or more"):
        annotate_manifest(rows, tmp_path / "x", log=ProblemLog(stream=None), progress=False, workers=0)


def test_strict_stops_at_the_first_problem(tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(BlastscopeError, match="black.png: no cell found"):
        annotate(folder_rows(tmp_path), tmp_path / "ann", log=ProblemLog(stream=None, strict=True), progress=False)


def test_same_name_in_two_folders_does_not_collide(cnmc_sample, tmp_path):
    cell = _images(cnmc_sample)[0]
    for sub in ("a", "b"):
        (tmp_path / "src" / sub).mkdir(parents=True)
        shutil.copy(cell, tmp_path / "src" / sub / "1.bmp")
    df = annotate(folder_rows(tmp_path / "src"), tmp_path / "ann", log=ProblemLog(stream=None), progress=False)
    assert sorted(Path(p).relative_to(tmp_path / "ann").as_posix() for p in df["annotation"]) == ["a/1.xml", "b/1.xml"]
    assert sorted(df["label"]) == ["a", "b"]  # parent folder names, kept as they are


def test_folder_rows_labels_and_empty_folders(tmp_path):
    from blastscope.annotate.annotator import folder_label

    assert folder_label("x/training_data/fold_1/hem/UID_H10_14_1_hem.bmp") == "HEM"
    assert folder_label("x/All/a.png") == "ALL"
    assert folder_label("x/blasts/a.png") == "blasts"
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "empty" / ".hidden" / "x.png")
    with pytest.raises(BlastscopeError, match="empty: no images found"):
        folder_rows(tmp_path / "empty")
    with pytest.raises(BlastscopeError, match="nope: folder not found"):
        folder_rows(tmp_path / "nope")


# --------------------------------------------------------------------------- CLI


def test_cli_end_to_end_on_a_copy_of_the_sample(cnmc_sample, tmp_path, capsys):
    src = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(cnmc_sample, src)
    out = tmp_path / "ann"
    assert main(["annotate", str(src), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "8 annotated, 0 kept, 0 with no cell" in text
    assert str(out) in text and "manifest.csv" in text
    df = read_manifest(out / "manifest.csv")
    assert len(df) == 8 and all(Path(p).is_file() for p in df["annotation"])
    assert set(df.loc[df["image"].str.contains("/training_data/"), "label"]) == {"ALL", "HEM"}
    assert len(list(out.rglob("*.xml"))) == 8

    assert main(["annotate", str(src), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "0 annotated, 8 kept, 0 with no cell" in captured.out
    assert "kept 8 existing annotations; pass --overwrite to recompute" in captured.err
    assert main(["annotate", str(src), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert "8 annotated, 0 kept" in capsys.readouterr().out


def test_cli_manifest_source_and_folder_label(cnmc_sample, tmp_path, capsys):
    manifest = write_manifest(pd.DataFrame(_cnmc_rows(cnmc_sample)), tmp_path / "m" / "manifest.csv")
    assert main(["annotate", str(manifest), "--out", str(tmp_path / "a1"), "--no-progress"]) == 0
    df = read_manifest(tmp_path / "a1" / "manifest.csv")
    names = {Path(p).name: ET.parse(p).getroot().findtext("object/name") for p in df["annotation"]}
    assert names["1105.xml"] == "ALL" and names["UID_h3_4_1_hem.xml"] == "HEM"

    hem = cnmc_sample / "training_data" / "fold_1" / "hem"
    assert main(["annotate", str(hem), "--out", str(tmp_path / "a2"), "--label", "blast", "--no-progress"]) == 0
    df = read_manifest(tmp_path / "a2" / "manifest.csv")
    assert len(df) == 2 and set(df["label"]) == {"blast"}
    assert {ET.parse(p).getroot().findtext("object/name") for p in df["annotation"]} == {"blast"}
    capsys.readouterr()


def test_cli_exit_status(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "src" / "black.png")
    assert main(["annotate", str(tmp_path / "src"), "--out", str(tmp_path / "ann"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "black.png: no cell found" in err and "error: no usable images" in err
    assert not (tmp_path / "ann" / "manifest.csv").exists()

    img = np.zeros((40, 40, 3), np.uint8)
    img[5:30, 5:30] = 120
    Image.fromarray(img).save(tmp_path / "src" / "cell.png")
    args = ["annotate", str(tmp_path / "src"), "--out", str(tmp_path / "ann"), "--no-progress"]
    assert main(args) == 0
    assert main([*args, "--strict", "--overwrite"]) == 2
    assert main(["annotate", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing: not found" in capsys.readouterr().err
