"""An ensemble of five models: the DLHub paper's SEM focus-detection case.

Served as one pipeline: step 1 computes focus measures of a scanning-electron-microscope
image; a parallel stage sends them to five scikit-learn classifiers at once (logistic
regression, random forest, gradient boosting, k-nearest neighbours, SVM), each its own
servable with its own warm workers; the last step combines their P(in focus) into a
verdict. Only the verdict goes back to the caller.

The paper's SEM images are not public, so ``prepare`` makes synthetic ones (particles on a
textured background, some blurred as if out of focus, with detector noise) and trains the
five members on them at set-up. Run it (``--hub ADDRESS`` to use a running hub)::

    python -m dlhub_hpc.examples.ensemble --images 8
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
PIPELINE = "demo/sem-focus"
FEATURES = "demo/sem-focus-features"
VOTE = "demo/sem-focus-vote"
MEMBERS = ("logistic", "forest", "boosting", "knn", "svm")
SHORT = {"logistic": "logreg", "forest": "forest", "boosting": "gboost", "knn": "knn",
         "svm": "svm"}  # table headers
SIZE = 64


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    kernel = np.exp(-2 * np.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))
    return np.real(np.fft.ifft2(np.fft.fft2(image) * kernel))


def synthetic_sem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 64x64 greyscale images and labels (1: in focus, 0: out of focus)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = np.empty((n, SIZE, SIZE))
    labels = rng.integers(2, size=n)
    for i in range(n):
        img = 0.3 + 0.05 * rng.normal(size=(SIZE, SIZE))  # textured substrate
        for _ in range(rng.integers(4, 14)):
            cy, cx = rng.uniform(0, SIZE, 2)
            r = rng.uniform(1.5, 6)
            img += rng.uniform(0.3, 0.8) * (np.hypot(yy - cy, xx - cx) < r)  # sharp-edged particle
        sigma = rng.uniform(0.0, 0.5) if labels[i] else rng.uniform(1.0, 3.0)
        img = _blur(img, sigma) * rng.uniform(0.7, 1.3)
        images[i] = img + rng.normal(0, 0.02, size=img.shape)  # detector noise after the optics
    return images, labels


def _members() -> dict[str, Any]:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        "forest": RandomForestClassifier(n_estimators=40, max_depth=6, random_state=0),
        "boosting": GradientBoostingClassifier(n_estimators=40, random_state=0),
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(7)),
        "svm": make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)),
    }


def _features(images: np.ndarray) -> np.ndarray:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sem_focus", HERE / "features" / "focus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return np.concatenate([module.measures(img) for img in images])


def prepare(dest: Path, n: int = 400) -> dict[str, Path]:
    """Write the features, five member, vote and pipeline servables to ``dest``; train the
    members on ``n`` synthetic images there."""
    dest = Path(dest)
    dirs = {part: Path(shutil.copytree(HERE / part, dest / part, dirs_exist_ok=True))
            for part in ("features", "combine", "pipeline")}
    images, labels = synthetic_sem(n, seed=0)
    x = _features(images)
    x_val, y_val = _features(synthetic_sem(200, seed=1)[0]), synthetic_sem(200, seed=1)[1]
    template = yaml.safe_load((HERE / "member" / "servable.yaml").read_text())
    scores = {}
    for name, model in _members().items():
        model.fit(x, labels)
        scores[name] = float((model.predict(x_val) == y_val).mean())
        spec = json.loads(json.dumps(template))
        spec["dlhub"]["name"] = f"sem-focus-{name}"
        spec["datacite"]["title"] = f"SEM focus classifier ({name}, ensemble member)"
        member = dest / f"member-{name}"
        member.mkdir(parents=True, exist_ok=True)
        (member / "servable.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        with (member / "model.pkl").open("wb") as fh:
            pickle.dump(model, fh)
        dirs[name] = member
    (dest / "training.json").write_text(json.dumps({"images": n, "accuracy": scores}))
    return dirs


def run(args: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from dlhub_hpc.examples import case_studies as cs

    console = Console()
    with cs.workdir(args.home) as home:
        console.print(f"training five focus classifiers on {args.train} synthetic SEM images "
                      "(the paper's images are not public)")
        dirs = prepare(home / "servables", args.train)
        accuracy = json.loads((home / "servables" / "training.json").read_text())["accuracy"]
        console.print("validation accuracy: " + ", ".join(
            f"{name} {acc:.0%}" for name, acc in accuracy.items()))
        steps = [FEATURES, *(f"demo/sem-focus-{m}" for m in MEMBERS), VOTE]
        with cs.hub_client(args.hub, home, console) as client:
            cs.publish(client, [dirs[p] for p in ("features", *MEMBERS, "combine",
                                                  "pipeline")], console)
            cs.start_workers(client, steps, args.workers, console)
            images, labels = synthetic_sem(args.images, seed=11)
            started = time.perf_counter()
            futures = [client.submit(PIPELINE, img) for img in images]
            verdicts = [f.result() for f in futures]
            elapsed = time.perf_counter() - started
            table = Table(title=f"SEM focus detection ({PIPELINE}: 5 models in parallel)")
            for col in ("img", *SHORT.values(), "mean", "verdict", "truth"):
                table.add_column(col, justify="left" if col in ("verdict", "truth")
                                 else "right")
            correct = 0
            for i, (v, truth) in enumerate(zip(verdicts, labels, strict=True)):
                correct += v["in_focus"] == bool(truth)
                table.add_row(str(i), *(f"{p:.2f}" for p in v["members"]),
                              f"{v['p_in_focus']:.2f}",
                              "sharp" if v["in_focus"] else "blurred",
                              "sharp" if truth else "blurred")
            table.caption = (f"P(in focus) per member; {correct}/{len(labels)} verdicts "
                             f"right; {len(labels)} images in {elapsed * 1000:.0f} ms")
            console.print(table)
            console.print(f"hub counters: {cs.batching_summary(client)}")
