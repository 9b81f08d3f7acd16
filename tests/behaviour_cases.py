"""The evaluation cases whose ``metrics.json`` must stay the same across refactors.

``python tests/behaviour_cases.py OUT.json`` evaluates, on fixed synthetic cells (SYNTHETIC) and four
real BCCD smears, a seeded untrained detector (boxes from the toy head of ``conftest``), a seeded
untrained classifier and the two together, and writes every metric to ``OUT.json``. The committed
``tests/data/behaviour_metrics.json`` was made this way at commit 9614dcb, before the architecture
change of issue 8; ``tests/test_behaviour_kept.py`` recomputes it and compares (COCO numbers to
1e-4, the rest to 1e-6). Only evaluation is exercised: training defaults may change on purpose.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[0].parent / "shared" / "data"
IMGSZ = 64


def _save(model, path: Path, input_size: int) -> Path:
    try:  # new layout (issue 8)
        from blastscope.models.checkpoint import make_checkpoint, save_checkpoint
    except ImportError:  # commit 9614dcb
        from blastscope.models.checkpoint import make_checkpoint, save_checkpoint
    return save_checkpoint(make_checkpoint(model, epoch=0, input_size=input_size), path)


def _evaluate(ckpt, data, **kw):
    from blastscope.engine.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(ckpt, data, split="test", progress=False, **kw).metrics


def compute(work: Path, bccd: Path | None = SHARED_DATA / "bccd") -> dict[str, dict[str, float]]:
    """Metrics of every case, ``{case: {key: value}}`` (NaN as None)."""
    import torch

    sys.path.insert(0, str(HERE))
    from blastscope.data.manifest import new_manifest, read_manifest, write_manifest
    from blastscope.data.synth import generate_dataset
    from blastscope.models import create_model
    from conftest import _toy_detector  # noqa: PLC0415 - the tests' own toy head

    m = generate_dataset(work / "synth", n_per_class=12, n_patients_per_class=4, size=96)
    df = read_manifest(m)
    df["split"] = ["test" if p in ("syn3", "syn4", "synH3", "synH4") else "train" for p in df["patient_id"]]
    write_manifest(df, m)

    det = _save(_toy_detector(), work / "det.pt", 256)
    torch.manual_seed(0)
    net = create_model("mobilenet_v2", num_classes=2, class_names=["ALL", "HEM"], pretrained=False)
    with torch.no_grad():  # batch-norm statistics from noise, so the untrained scores vary with the input
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
                mod.reset_running_stats()
        net.train()
        net(torch.rand(8, 3, IMGSZ, IMGSZ))
        net.eval()
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = 0.1
            if isinstance(mod, torch.nn.Linear):
                torch.nn.init.normal_(mod.weight, std=1.0)
    cls = _save(net, work / "cls.pt", IMGSZ)
    cases = {
        "detect": _evaluate(det, m, min_score=0.3),
        "classify": _evaluate(cls, m),
        "detect+classify": _evaluate(det, m, classifier=cls),
    }
    if bccd is not None and bccd.exists():
        ids = (bccd / "ImageSets" / "Main" / "test.txt").read_text().split()[:4]
        rows = [
            {
                "image": str(bccd / "JPEGImages" / f"{i}.jpg"),
                "annotation": str(bccd / "Annotations" / f"{i}.xml"),
                "split": "test",
                "source": "voc",
            }
            for i in ids
        ]
        b = new_manifest(rows)
        b.attrs["classes"] = ["Platelets", "RBC", "WBC"]
        bm = write_manifest(b, work / "bccd.csv")
        torch.manual_seed(0)
        model = _toy_detector()
        # the toy is made for ALL/HEM: rebuild its heads for three classes with the same recipe
        torch.manual_seed(0)
        model3 = create_model("yolov3-tiny", num_classes=3, class_names=["Platelets", "RBC", "WBC"], pretrained=False)
        sd = {k: v for k, v in model.state_dict().items() if "head" not in k}
        model3.load_state_dict(sd, strict=False)
        with torch.no_grad():
            for head in (model3.head32, model3.head16):
                torch.nn.init.normal_(head.weight, std=0.05)
                head.bias.view(3, -1)[:, 4] = -2.0
        cases["bccd_detect"] = _evaluate(_save(model3, work / "bccd_det.pt", 256), bm)

    def clean(v):
        v = float(v)
        return None if math.isnan(v) else v

    return {c: {k: clean(v) for k, v in sorted(d.items()) if isinstance(v, (int, float))} for c, d in cases.items()}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        out = compute(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print({c: len(d) for c, d in out.items()})


def compute_two_stage_with_predictions(work: Path) -> tuple[dict, dict]:
    """Each case evaluated, written (``predictions.csv``), and rescored from that file alone."""
    import torch

    sys.path.insert(0, str(HERE))
    from blastscope.data.manifest import read_manifest, write_manifest
    from blastscope.data.synth import generate_dataset
    from blastscope.engine.evaluate import evaluate_checkpoint
    from blastscope.engine.report import write_report
    from blastscope.models import create_model
    from conftest import _toy_detector  # noqa: PLC0415

    m = generate_dataset(work / "synth", n_per_class=8, n_patients_per_class=4, size=96)
    df = read_manifest(m)
    df["split"] = ["test" if p in ("syn3", "syn4", "synH3", "synH4") else "train" for p in df["patient_id"]]
    write_manifest(df, m)
    det = _save(_toy_detector(), work / "det.pt", 256)
    torch.manual_seed(0)
    cls = _save(create_model("mobilenet_v2", num_classes=2, class_names=["ALL", "HEM"], pretrained=False), work / "cls.pt", 64)
    direct, rescored = {}, {}
    for case, ckpt, kw in (("detect", det, {}), ("classify", cls, {}), ("detect+classify", det, {"classifier": cls})):
        r = evaluate_checkpoint(ckpt, m, split="test", progress=False, **kw)
        write_report(r, work / case)
        again = evaluate_checkpoint(ckpt, m, split="test", progress=False, predictions=work / case / "predictions.csv", **kw)
        clean = lambda d: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}  # noqa: E731
        direct[case], rescored[case] = clean(r.metrics), clean(again.metrics)
    return direct, rescored
