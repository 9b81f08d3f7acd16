"""The desktop app (``blastscope gui``) under ``QT_QPA_PLATFORM=offscreen`` with pytest-qt.

The detector is the real ``yolov3-tiny``, untrained but made to give a few boxes per image (as in
``test_predict.py``), saved in the engine's checkpoint format at a small input size. Its boxes mean
nothing; the tests check that the app shows, counts and saves exactly what the predictor and
``blastscope predict`` give.

Set ``BLASTSCOPE_GUI_SCREENSHOTS=docs/screenshots`` to write the screenshots of the three modes used
in ``docs/gui.md`` (otherwise they go to a temporary folder).
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings  # noqa: E402

from blastscope.cli.main import main  # noqa: E402
from blastscope.data.images import read_image  # noqa: E402
from blastscope.gui import MainWindow  # noqa: E402
from blastscope.inference import Frame, Predictor, draw_detections, open_source  # noqa: E402
from blastscope.inference.writers import format_rows  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]
CONF = 0.25
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def detector_ckpt(toy_detector_ckpt) -> Path:
    return toy_detector_ckpt


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    from blastscope.models import create_model
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    model = create_model("mobilenet_v2", num_classes=2, class_names=["ALL", "HEM"], pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "cls.pt"
    save_checkpoint(make_checkpoint(model, epoch=0), path)
    return path


@pytest.fixture(scope="module")
def cnmc_image(cnmc_sample) -> Path:
    return sorted(cnmc_sample.rglob("*.bmp"))[0]


@pytest.fixture(scope="module")
def bccd_video(bccd, tmp_path_factory) -> Path:
    """A 6-frame Motion-JPEG video of real BCCD smears (320x240, 30 frames/s)."""
    path = tmp_path_factory.mktemp("video") / "bccd.avi"
    images = sorted((bccd / "JPEGImages").glob("*.jpg"))[:6]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    assert vw.isOpened()
    for p in images:
        vw.write(cv2.resize(cv2.imread(str(p)), (320, 240), interpolation=cv2.INTER_AREA))
    vw.release()
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: ``$BLASTSCOPE_GUI_SCREENSHOTS`` or a temporary folder."""
    out = os.environ.get("BLASTSCOPE_GUI_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def settings(tmp_path) -> QSettings:
    """A settings file in the test's temporary folder (the user's settings are never touched)."""
    return QSettings(str(tmp_path / "blastscope-gui.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def make_window(qtbot, settings):
    windows = []

    def make(**kw) -> MainWindow:
        kw.setdefault("dialogs", True)
        w = MainWindow(kw.pop("settings", settings), **kw)
        qtbot.addWidget(w)
        w.resize(1200, 720)
        w.show()
        windows.append(w)
        return w

    yield make
    for w in windows:
        assert w.wait_idle(10), "a worker thread did not stop"


def _load(qtbot, window: MainWindow, ckpt: Path) -> None:
    window.load_model(ckpt)
    qtbot.waitUntil(lambda: window.predictor is not None and window._loading is None, timeout=WAIT_MS)


def _wait_message(qtbot, window: MainWindow, n_before: int) -> str:
    qtbot.waitUntil(lambda: len(window.messages) > n_before, timeout=WAIT_MS)
    return window.messages[-1]


def _csv_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _assert_same_csv(a: Path, b: Path, atol: float = 1e-3) -> None:
    """The same rows, text fields equal and numbers within ``atol`` (the GUI runs the standard predictor,
    ``blastscope predict`` may run the torch-free one: boxes can differ in the last printed digit)."""
    rows_a, rows_b = (list(csv.reader(p.open(encoding="utf-8"))) for p in (a, b))
    assert len(rows_a) == len(rows_b) and rows_a[0] == rows_b[0]
    for ra, rb in zip(rows_a[1:], rows_b[1:], strict=True):
        assert len(ra) == len(rb)
        for x, y in zip(ra, rb, strict=True):
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                assert x == y, (ra, rb)
            else:
                assert abs(fx - fy) <= atol, (ra, rb)


# ---------------------------------------------------------------------------------------------
# image mode


def test_image_table_csv_and_annotated_image_match_predict(
    qtbot, make_window, detector_ckpt, cnmc_image, tmp_path, capsys, shots
):
    window = make_window()
    _load(qtbot, window, detector_ckpt)
    window.open_image(cnmc_image)
    qtbot.waitUntil(lambda: window.current_result("image") is not None, timeout=WAIT_MS)

    expected = Predictor.from_checkpoint(detector_ckpt, conf=CONF).predict(read_image(cnmc_image))
    assert expected.detections, "the test detector should find a few boxes"
    table = window.table.rows()
    assert [r[1] for r in table] == [d.class_name for d in expected.detections]
    np.testing.assert_allclose([float(r[2]) for r in table], [d.confidence for d in expected.detections], atol=1e-3)
    np.testing.assert_allclose([[float(v) for v in r[3:]] for r in table], [d.box for d in expected.detections], atol=0.06)
    counts = window.counts.counts()
    assert counts["total"][0] == len(expected.detections)
    for name, n in expected.counts().items():
        assert counts[name][0] == n
    assert "Call for this image" in window.call_label.text()

    # Save CSV == what `blastscope predict` writes for the same image and threshold
    saved = window.save_csv(tmp_path / "gui.csv")
    rc = main(
        [
            "predict",
            str(detector_ckpt),
            str(cnmc_image),
            "--out",
            str(tmp_path / "cli"),
            "--conf",
            str(CONF),
            "--no-draw",
            "--no-progress",
        ]
    )
    capsys.readouterr()
    assert rc == 0
    _assert_same_csv(saved, tmp_path / "cli" / "predictions.csv")
    assert len(_csv_lines(saved)) == 1 + len(expected.detections)

    # Save annotated image == draw_detections on the same frame
    png = window.save_annotated_image(tmp_path / "annotated.png")
    np.testing.assert_array_equal(read_image(png), draw_detections(read_image(cnmc_image), expected))
    assert not window.messages


def test_folder_steps_through_every_image(qtbot, make_window, detector_ckpt, cnmc_sample, tmp_path, capsys, shots):
    window = make_window()
    _load(qtbot, window, detector_ckpt)
    window.open_folder(cnmc_sample)
    n_images = len(list(cnmc_sample.rglob("*.bmp")))
    qtbot.waitUntil(lambda: window.states["image"].ended, timeout=WAIT_MS)
    assert len(window.result_rows()) == n_images
    order = [f.source for f in open_source(cnmc_sample)]  # predict's order: sorted by path
    assert window.current_result().source == order[0]
    assert not window.image_panel.prev_button.isEnabled() and window.image_panel.next_button.isEnabled()

    window.next_image()
    second = window.current_result()
    assert second.source == order[1]
    assert window.table.rowCount() == len(second.detections)
    assert window.image_panel.label.text().startswith(f"image 2 / {n_images}")
    window.previous_image()
    assert window.image_panel.label.text().startswith("image 1 /")

    saved = window.save_csv(tmp_path / "folder.csv")
    assert (
        main(
            [
                "predict",
                str(detector_ckpt),
                str(cnmc_sample),
                "--out",
                str(tmp_path / "cli"),
                "--conf",
                str(CONF),
                "--no-draw",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    _assert_same_csv(saved, tmp_path / "cli" / "predictions.csv")

    # a new threshold predicts the folder again and stays on the image shown
    window.next_image()
    window.set_confidence(0.33)
    qtbot.waitUntil(
        lambda: (
            window.predictor.conf == pytest.approx(0.33) and window.states["image"].ended and window.current_result() is not None
        ),
        timeout=WAIT_MS,
    )
    assert window.image_panel.label.text() == f"image 2 / {n_images}"
    expected = Predictor.from_checkpoint(detector_ckpt, conf=0.33).predict(read_image(window.current_result().source))
    assert window.table.rowCount() == len(expected.detections)
    window.grab().save(str(shots / "gui_image.png"))


def test_confidence_change_predicts_again_and_is_remembered(qtbot, make_window, detector_ckpt, cnmc_image, settings):
    window = make_window()
    _load(qtbot, window, detector_ckpt)
    window.open_image(cnmc_image)
    qtbot.waitUntil(lambda: window.current_result("image") is not None, timeout=WAIT_MS)
    n_low = window.table.rowCount()

    window.set_confidence(0.35)  # the toy detector's scores reach about 0.44: fewer boxes, not none
    assert window.conf_slider.value() == 35
    qtbot.waitUntil(
        lambda: (
            window.predictor.conf == pytest.approx(0.35)
            and window._loading is None
            and window.current_result("image") is not None
        ),
        timeout=WAIT_MS,
    )
    expected = Predictor.from_checkpoint(detector_ckpt, conf=0.35).predict(read_image(cnmc_image))
    assert 0 < window.table.rowCount() == len(expected.detections) < n_low
    window.wait_idle()

    # a new window with the same settings loads the last model at the last threshold
    again = make_window()
    assert again.conf == pytest.approx(0.35)
    qtbot.waitUntil(lambda: again.predictor is not None, timeout=WAIT_MS)
    assert again.model_path == detector_ckpt
    assert str(detector_ckpt) == settings.value("model/path")


# ---------------------------------------------------------------------------------------------
# video mode


def test_video_plays_to_the_end_and_every_frame_is_processed(qtbot, make_window, detector_ckpt, bccd_video, tmp_path, shots):
    window = make_window()
    _load(qtbot, window, detector_ckpt)
    window.open_video(bccd_video)
    # opens paused on the first frame
    qtbot.waitUntil(lambda: window.current_result("video") is not None, timeout=WAIT_MS)
    assert window.current_result("video").frame == 0
    window.step()
    qtbot.waitUntil(lambda: window.current_result("video").frame == 1, timeout=WAIT_MS)

    window.play()
    qtbot.waitUntil(lambda: window.states["video"].ended, timeout=WAIT_MS)
    with open_source(bccd_video) as src:
        expected = list(Predictor.from_checkpoint(detector_ckpt, conf=CONF).stream(src))
    results = window.result_rows("video")
    assert [r.frame for r in results] == list(range(len(expected))) == list(range(6))
    assert [format_rows(r) for r in results] == [format_rows(e) for e in expected]
    assert window.video_panel.seek_slider.value() == 5 and window.video_panel.play_button.text() == "▶ Play"

    saved = window.save_csv(tmp_path / "video.csv")
    assert len(_csv_lines(saved)) == 1 + sum(len(format_rows(e)) for e in expected)

    # seek back: frame 2 is predicted again and shown (paused)
    window.seek(2)
    qtbot.waitUntil(lambda: window.current_result("video").frame == 2, timeout=WAIT_MS)
    assert window.table.rowCount() == len(expected[2].detections)
    assert window.video_panel.seek_slider.value() == 2
    window.grab().save(str(shots / "gui_video.png"))

    # a new threshold predicts the frame on screen again; the results start afresh
    window.set_confidence(0.3)
    qtbot.waitUntil(
        lambda: (
            window.predictor.conf == pytest.approx(0.3)
            and window.current_result("video") is not None
            and window.current_result("video").frame == 2
        ),
        timeout=WAIT_MS,
    )
    frame2 = Frame(expected[2].image, expected[2].source, 2, expected[2].time_s)
    strict = Predictor.from_checkpoint(detector_ckpt, conf=0.3).predict(frame2)
    assert format_rows(window.current_result("video")) == format_rows(strict)
    assert [r.frame for r in window.result_rows("video")] == [2]


def test_each_tab_shows_its_own_state_and_leaving_a_playing_video_pauses_it(qtbot, make_window, detector_ckpt, bccd_video):
    """One panel per mode over one shared view: the Image tab shows its own (empty) state while the
    video stays open, paused, and the Video tab shows its frame again."""
    window = make_window()
    _load(qtbot, window, detector_ckpt)
    window.open_video(bccd_video)
    qtbot.waitUntil(lambda: window.current_result("video") is not None, timeout=WAIT_MS)
    window.play()
    assert window.video_panel.play_button.text() == "❚❚ Pause"
    window.set_mode("image")
    worker = window.video_panel.worker()
    assert worker is not None and not worker.playing  # paused, not stopped
    assert window.view.image() is None and window.table.rowCount() == 0 and window.call_label.text() == ""
    window.set_mode("video")
    assert window.view.image() is not None and window.video_panel.play_button.text() == "▶ Play"
    assert window.current_result() is window.current_result("video")


def test_video_without_frames_gives_a_message(qtbot, make_window, detector_ckpt, tmp_path):
    window = make_window()
    _load(qtbot, window, detector_ckpt)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"not a video at all")
    window.open_video(empty)
    message = _wait_message(qtbot, window, 0)
    assert str(empty) in message and "video" in message
    qtbot.waitUntil(lambda: window._current_worker() is None, timeout=WAIT_MS)
    assert not window.video_panel.play_button.isEnabled()


# ---------------------------------------------------------------------------------------------
# camera mode and user errors


def test_missing_camera_gives_a_message_and_the_app_stays_usable(qtbot, make_window, detector_ckpt, cnmc_image, shots):
    window = make_window()
    _load(qtbot, window, detector_ckpt)
    window.start_camera(99)
    message = _wait_message(qtbot, window, 0)
    assert "camera 99 did not open" in message
    assert window.message_box is not None and window.message_box.isVisible()
    assert not window.message_box.isModal()
    qtbot.waitUntil(lambda: window.camera_panel.start_button.isEnabled(), timeout=WAIT_MS)
    assert window.camera_panel.label.text() == "no camera"
    window.grab().save(str(shots / "gui_camera.png"))

    window.open_image(cnmc_image)  # still usable
    qtbot.waitUntil(lambda: window.current_result("image") is not None, timeout=WAIT_MS)
    assert window.current_mode() == "image"


def test_no_model_chosen_gives_a_message(qtbot, make_window, cnmc_image, tmp_path):
    window = make_window()
    window.open_image(cnmc_image)
    assert "No model chosen" in window.messages[-1]
    window.start_camera(0)
    assert "No model chosen" in window.messages[-1]
    assert window.save_csv(tmp_path / "x.csv") is None and "Nothing to save" in window.messages[-1]
    assert window.save_annotated_image(tmp_path / "x.png") is None
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.png").exists()


def test_detector_with_a_cell_classifier(qtbot, make_window, detector_ckpt, classifier_ckpt, cnmc_image, settings):
    """Two stages in the GUI: each detected cell gets the classifier's class; the call shows the blast share."""
    window = make_window()
    window.load_model(detector_ckpt, classifier=classifier_ckpt)
    qtbot.waitUntil(lambda: window.predictor is not None and window._loading is None, timeout=WAIT_MS)
    assert window.classifier_path == classifier_ckpt and "cells classified by" in window.model_label.text()
    window.open_image(cnmc_image)
    qtbot.waitUntil(lambda: window.current_result("image") is not None, timeout=WAIT_MS)
    expected = Predictor.from_checkpoint(detector_ckpt, conf=CONF, classifier=classifier_ckpt).predict(read_image(cnmc_image))
    assert [r[1] for r in window.table.rows()] == [name for name, _ in expected.labels()]
    assert set(r[1] for r in window.table.rows()) <= {"ALL", "HEM"}
    assert "white cells" in window.call_label.text()
    assert settings.value("model/classifier") == str(classifier_ckpt)  # remembered with the detector


def test_checkpoint_of_another_task_gives_a_message(qtbot, make_window, detector_ckpt, classifier_ckpt, tmp_path):
    window = make_window()
    window.load_model(detector_ckpt, classifier=detector_ckpt)  # a detector is no cell classifier
    message = _wait_message(qtbot, window, 0)
    assert str(detector_ckpt) in message and "not a cell classifier" in message
    assert window.predictor is None and window.model_label.text() == "no model chosen"

    _load(qtbot, window, detector_ckpt)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    window.load_model(junk)
    message = _wait_message(qtbot, window, 1)
    assert str(junk) in message
    assert window.model_path == detector_ckpt  # the previous model is kept


def test_unreadable_image_gives_a_message(qtbot, make_window, detector_ckpt, cnmc_image, tmp_path):
    window = make_window()
    _load(qtbot, window, detector_ckpt)
    bad = tmp_path / "broken.bmp"
    bad.write_bytes(b"BM this is not a bitmap")
    window.open_image(bad)
    message = _wait_message(qtbot, window, 0)
    assert str(bad) in message
    window.open_image(tmp_path / "notes.txt")
    assert "not an image" in window.messages[-1]
    window.open_image(cnmc_image)
    qtbot.waitUntil(lambda: window.current_result("image") is not None, timeout=WAIT_MS)


# ---------------------------------------------------------------------------------------------
# the command


def test_gui_command_without_pyside6_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "PySide6", None)  # import PySide6 -> ImportError
    assert main(["gui"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'blastscope[gui]'" in err and len(err.strip().splitlines()) == 1


def test_gui_command_checks_its_arguments(capsys, tmp_path):
    assert main(["gui", "--model", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["gui", "--conf", "2"]) == 2
    assert "--conf" in capsys.readouterr().err
